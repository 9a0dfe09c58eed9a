"""JSON nested deeper than Python's parser can follow raised RecursionError (not ValueError) from
manifest.json, .verified.json and tokenizer/tokenizer.json: a traceback out of verify, summary,
rows and kto-train. Now each is one line, `PATH: unreadable (…)`; an unreadable `.verified.json`
or `.tokenizer-checked.json` is only a stamp, and is ignored (the shards are hashed again)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_train, train_error_line

from kto.formats.errors import InputError
from kto.formats.runrecord import read_run_config
from kto.formats.shards import Journal
from kto.inspection.cli import main as inspect_main

DEEP = "[" * 100_000 + "]" * 100_000  # far past the recursion limit (1000)


def deep_copy(cache: Path, dest: Path, name: str) -> Path:
    """A copy of `cache` whose file `name` holds DEEP (inside its object, if it has one)."""
    shutil.copytree(cache, dest)
    path = dest / name
    if path.is_file():
        text = json.dumps(json.loads(path.read_text()))
        path.write_text(text[:-1] + ', "deep": ' + DEEP + "}")
    else:
        path.write_text(DEEP)
    return dest


def inspect(*args: str):
    result = CliRunner().invoke(inspect_main, [str(a) for a in args])
    assert "Traceback" not in result.output and not isinstance(result.exception, RecursionError), result.output
    return result


def test_read_json_says_unreadable_for_deep_nesting(tmp_path):
    from kto.formats.files import read_json

    path = tmp_path / "x.json"
    path.write_text(DEEP)
    with pytest.raises(InputError) as err:
        read_json(path)
    assert str(err.value) == f"{path}: unreadable (JSON nested too deeply)"


@pytest.mark.parametrize("command", ["verify", "summary", "rows"])
def test_deep_manifest_is_one_line_in_inspect(tiny_cache, tmp_path, command):
    cache = deep_copy(tiny_cache, tmp_path / "c", "manifest.json")
    result = inspect(command, cache)
    expected = f"{cache / 'manifest.json'}: unreadable (JSON nested too deeply)"
    assert result.exit_code == (1 if command == "verify" else 2), result.output
    assert expected in result.output.splitlines()[0], result.output


def test_deep_tokenizer_json_is_one_line_in_verify_and_rows(tiny_cache, tmp_path):
    cache = deep_copy(tiny_cache, tmp_path / "c", "tokenizer/tokenizer.json")
    expected = f"{cache / 'tokenizer' / 'tokenizer.json'}: unreadable (JSON nested too deeply)"
    verified = inspect("verify", cache)
    assert verified.exit_code == 1 and verified.output.splitlines().count(f"kto-inspect: verify: {expected}") == 1, verified.output
    rows = inspect("rows", cache)
    assert rows.exit_code == 2 and rows.output.strip() == f"kto-inspect: error: {expected}", rows.output


def test_deep_verified_record_is_ignored_and_shards_rehashed(tiny_cache, tiny_model_dir, tmp_path):
    cache = deep_copy(tiny_cache, tmp_path / "c", ".verified.json")
    (cache / ".tokenizer-checked.json").write_text(DEEP)  # the other memo: the tokenizer is compared again
    assert inspect("summary", cache).exit_code == 0
    assert inspect("rows", cache, "--limit", "1").exit_code == 0
    result = run_train(cache, tiny_model_dir, tmp_path / "run", "--max-steps", "1", "--batch-size", "4")
    assert result.exit_code == 0, result.output
    record = json.loads((cache / ".verified.json").read_text())  # rewritten by the re-hash
    assert sorted(record) == sorted(p.name for p in cache.glob("shard-*.arrow"))
    assert isinstance(json.loads((cache / ".tokenizer-checked.json").read_text()), dict)


@pytest.mark.parametrize("name", ["manifest.json", "tokenizer/tokenizer.json"])
def test_deep_cache_file_is_one_line_in_kto_train_before_out(tiny_cache, tiny_model_dir, tmp_path, name):
    cache = deep_copy(tiny_cache, tmp_path / "c", name)
    result = run_train(cache, tiny_model_dir, tmp_path / "run", "--max-steps", "1")
    assert result.exit_code == 2, result.output
    assert f"{cache / name}: unreadable (JSON nested too deeply)" in train_error_line(result.output)
    assert not (tmp_path / "run").exists()


def test_deep_run_config_and_journal_record(tmp_path):
    (tmp_path / "config.json").write_text(DEEP)
    assert read_run_config(tmp_path) is None  # a legacy name proves nothing unless it reads as a run record
    (tmp_path / "kto_run.json").write_text(DEEP)
    with pytest.raises(InputError, match=r"kto_run.json: unreadable \(JSON nested too deeply\)"):
        read_run_config(tmp_path)
    journal = Journal(tmp_path)
    journal.dir.mkdir()
    (journal.dir / "run.json").write_text(DEEP)
    assert journal.run() is None  # unreadable: proves nothing, as a missing record


def test_deep_adapter_config_is_one_line_in_score(tiny_cache, tmp_path):
    """RUN/final/adapter_config.json names the base model for `kto-inspect score --model RUN/final`."""
    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(DEEP)
    result = inspect("score", tiny_cache, "--model", adapter, "--out", tmp_path / "s.parquet")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"kto-inspect: error: {adapter.resolve() / 'adapter_config.json'}: unreadable (JSON nested too deeply)"


def test_deep_trainer_state_or_safetensors_header_is_a_checkpoint_problem(tmp_path):
    """--resume reads trainer_state.json and each weight file's JSON header: deep nesting makes the
    checkpoint corrupt (so kto-train falls back to the previous one), not a RecursionError."""
    import struct

    from kto.train.checkpoint import checkpoint_problem, record_checksums, safetensors_problem

    weights = tmp_path / "model.safetensors"
    header = DEEP.encode()
    weights.write_bytes(struct.pack("<Q", len(header)) + header)
    assert safetensors_problem(weights) == "unreadable (RecursionError)"
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(DEEP)
    record_checksums(ckpt)  # a forged record: the file's own check must still catch it
    assert checkpoint_problem(ckpt) == "trainer_state.json unreadable (RecursionError)"


def test_deep_manifest_in_precompute_out_is_refused_in_one_line(tiny_model_dir, tmp_path):
    """A manifest.json in --out that is nested too deeply is not ours: refused untouched, no traceback."""
    from conftest import precompute_args, text_rows, write_rows

    from kto.precompute.cli import main as precompute
    from kto.precompute.output import own_manifest

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(DEEP)
    assert own_manifest(out) is None
    data = write_rows(tmp_path / "d.jsonl", text_rows()[:4])
    result = CliRunner().invoke(precompute, precompute_args(data, tiny_model_dir, out, "--overwrite"))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert (out / "manifest.json").read_text() == DEEP
