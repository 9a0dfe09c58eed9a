"""`max_length: null` in a TRL config (TRL: "If None, no truncation is applied") has its own
refusal: kto-precompute always cuts at some max_length, so the line says there is no unlimited
length here and what to give instead (not "give a value or leave the key out", whose default,
1024, cuts). kto-train ignores max_length (kto-precompute's key) in a shared file, null too."""

from __future__ import annotations

from click.testing import CliRunner
from conftest import text_rows, write_rows

from kto.formats.config_names import PRECOMPUTE, TRAIN, resolve
from kto.formats.errors import InputError
from kto.precompute.cli import main

SAID = (
    "max_length: null: TRL's null (no truncation) has no equal in kto-precompute, which cuts a row longer than max_length "
    "(1024 with the key left out): give max_length: N, N at least your longest row's prompt + completion in tokens; "
    "kto-precompute's last lines and kto-inspect summary CACHE count the rows cut (truncated)"
)


def test_max_length_null_is_refused_with_its_own_line_and_nothing_is_written(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    config, out = tmp_path / "trl.yaml", tmp_path / "cache"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\ndata: {data}\ncache: {out}\nmax_length: null\nmax_prompt_length: 64\n")
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == f"kto-precompute: error: --config {config}: {SAID}"
    assert "is empty" not in result.output and not out.exists()


def test_resolve_refuses_it_for_kto_precompute_only():
    try:
        resolve({"model_name_or_path": "m", "max_length": None}, PRECOMPUTE)
    except InputError as exc:
        assert str(exc) == SAID
    else:
        raise AssertionError("max_length: null was taken")
    trained = resolve({"model_name_or_path": "m", "max_length": None}, TRAIN)
    assert "max_length" not in trained.values and "kto-precompute's key, ignored by kto-train: max_length" in trained.notes
