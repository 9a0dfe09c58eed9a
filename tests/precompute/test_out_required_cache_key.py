"""A config file shared by both commands (TRL's names, output_dir for kto-train's run) and with no
cache: key: kto-precompute's refusal names `cache: DIR` for the file, the key both commands read
(kto-precompute's --out, kto-train's --cache); `out:` there would be kto-train's run too, and
kto-train refuses a file that sets its --out twice (output_dir and out). Following the advice
makes the cache."""

from __future__ import annotations

from click.testing import CliRunner
from conftest import text_rows, write_rows

from kto.formats.config_names import TRAIN, resolve
from kto.precompute.cli import main

SAID = "kto-precompute: error: --out is required (on the command line, or cache: DIR in --config, the key kto-train reads its --cache from too)"


def shared_file(tmp_path, model, extra: str = "") -> tuple:
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    config = tmp_path / "trl.yaml"
    config.write_text(f"model_name_or_path: {model}\ndata: {data}\noutput_dir: {tmp_path / 'run'}\nmax_length: 64\nlearning_rate: 1.0e-6\n{extra}")
    return config


def test_a_shared_file_without_cache_is_told_to_name_cache(tmp_path, tiny_model_dir):
    config = shared_file(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == SAID
    assert not (tmp_path / "run").exists()


def test_the_flags_alone_say_the_same(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    result = CliRunner().invoke(main, ["--data", str(data), "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [SAID]


def test_cache_in_the_file_makes_the_cache_and_is_kto_train_s_cache(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    config = shared_file(tmp_path, tiny_model_dir, f"cache: {cache}\n")
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 0, result.output
    assert (cache / "manifest.json").is_file() and not (tmp_path / "run").exists()
    trained = resolve({"output_dir": str(tmp_path / "run"), "cache": str(cache)}, TRAIN)
    assert trained.values["cache"] == str(cache) and trained.values["out"] == str(tmp_path / "run")
