"""kto-precompute's values are checked before anything is written: a --config value as kto-train
checks its own (an int key takes a whole number, not true, 64.7 or a list), and every integer
setting within the range the pipeline's numpy/torch integers and int32 Arrow lists hold, from a
flag, a config key or the Python API alike. Each refusal is one line and leaves no --out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import precompute_args, text_rows, write_rows

import kto.precompute
from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest
from kto.precompute.cli import config_from, main
from kto.precompute.config import PrecomputeConfig


def refusal(result: Result) -> str:
    """The one line of a refused run (exit status 2), without its 'kto-precompute: error: '."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    # Before it, only the notes a --config file's keys print (`cutoff_len: 64 -> max_length 64, ...`).
    assert all(line.startswith("kto-precompute: --config ") for line in lines[:-1]), result.output
    return lines[-1].removeprefix("kto-precompute: error: ")


def run_with_config(tmp_path: Path, model: Path, text: str) -> tuple[Result, Path, Path]:
    """kto-precompute with `text` as its --config file (YAML) and no flag the file could set."""
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    config, out = tmp_path / "p.yaml", tmp_path / "out"
    config.write_text(text)
    result = CliRunner().invoke(main, ["--data", str(data), "--model", str(model), "--out", str(out), "--config", str(config)])
    return result, config, out


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("rows_per_shard: [1, 2]\n", "rows_per_shard: expected one integer value, got a list"),  # was a TypeError traceback
        ("max_length: 64.7\n", "max_length: 64.7 is not a whole number"),  # was taken for 64
        ("max_length: true\n", "max_length: True is true/false; expected integer"),  # was taken for 1
        ("cutoff_len: 64.5\n", "cutoff_len: 64.5 is not a whole number"),  # LLaMA-Factory's name, as written
        ("max-length: many\n", "max_length: 'many' is not a valid integer."),
        ("seed: {a: 1}\n", "seed: expected one integer value, got a mapping"),
        ("eval_fraction: false\n", "eval_fraction: False is true/false; expected float"),
        ("store_token_logps: 1\n", "store_token_logps: 1 is not true or false"),
        ("chunk_size: null\n", "chunk_size: is empty; give a value or leave the key out"),
        ("attn_implementation: [sdpa]\n", "attn_implementation: expected one text value, got a list"),
        ("chat_template: true\n", "chat_template: True is true/false; expected path"),
        ("dtype: 16\n", "dtype: '16' is not one of 'auto', 'fp32', 'bf16', 'fp16', 'amp-bf16', 'amp-fp16'."),
        ("data: [[a.jsonl]]\n", "data: expected one path value, got a list"),
    ],
)
def test_a_config_value_of_the_wrong_kind_is_refused_in_one_line(tmp_path, tiny_model_dir, text, expect):
    result, config, out = run_with_config(tmp_path, tiny_model_dir, text)
    assert refusal(result) == f"--config {config}: {expect}"
    assert not out.exists()


def test_config_values_that_mean_a_whole_number_are_taken(tmp_path):
    """A YAML string is read as command-line text is, and 64.0 is the whole number 64."""
    config = tmp_path / "p.yaml"
    config.write_text("max_length: '64'\nrows_per_shard: 8.0\neval_fraction: 0\ndata: a.jsonl\nstore_token_logps: 'no'\n")
    ctx = main.make_context("kto-precompute", ["--config", str(config), "--model", "m", "--out", str(tmp_path / "o")])
    cfg = config_from(ctx, ctx.params.pop("config_file"), ctx.params)
    assert (cfg.max_length, cfg.rows_per_shard, cfg.eval_fraction, cfg.data, cfg.store_token_logps) == (64, 8, 0.0, (Path("a.jsonl"),), False)
    assert type(cfg.rows_per_shard) is int and type(cfg.eval_fraction) is float


@pytest.mark.parametrize(
    ("flag", "value", "expect"),
    [
        ("--max-length", "99999999999999999999", "must be in [2, 2**31)"),  # was an OverflowError in plan.py, --out half-written
        ("--max-length", "2147483648", "must be in [2, 2**31)"),
        ("--max-prompt-length", "2147483648", "must be in [1, 2**31)"),
        ("--max-samples", "9223372036854775808", "must be in [1, 2**63)"),
        ("--rows-per-shard", "2147483648", "must be in [1, 2**31)"),
        ("--batch-tokens", "2147483648", "must be in [1, 2**31)"),
        ("--chunk-size", "2147483648", "must be in [1, 2**31)"),
        ("--chunk-size", "0", "must be in [1, 2**31)"),
        ("--seed", "4294967296", "must be in [0, 2**32)"),  # kto-train's --seed range
        ("--seed", "-1", "must be in [0, 2**32)"),
        ("--eval-fraction", "nan", "must be in [0, 1)"),
    ],
)
def test_an_integer_flag_out_of_range_is_refused_before_anything_is_written(tmp_path, tiny_model_dir, flag, value, expect):
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [*precompute_args(data, tiny_model_dir, out), flag, value])
    assert refusal(result) == f"{flag} {value}: {expect}"
    assert not out.exists()


def test_a_config_key_out_of_range_is_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    """The bound is the setting's, whichever way the value came (here LLaMA-Factory's name)."""
    result, config, out = run_with_config(tmp_path, tiny_model_dir, "cutoff_len: 99999999999999999999\n")
    assert refusal(result) == f"--config {config}: cutoff_len 99999999999999999999 (kto-precompute's --max-length): must be in [2, 2**31)"
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        # The checks name the flag (`--max-length 0`); a value from the file is named by its key.
        ("cutoff_len: 0\n", "cutoff_len 0 (kto-precompute's --max-length): must be in [2, 2**31)"),
        ("val_size: -0.1\n", "val_size -0.1 (kto-precompute's --eval-fraction): must be in [0, 1)"),
        ("chunk_size: 0\n", "chunk_size 0: must be in [1, 2**31)"),
        (
            "cutoff_len: 64\nmax_prompt_length: 64\n",
            "max_prompt_length 64: must be positive and smaller than --max-length 64; --max-length comes from the file's cutoff_len: 64",
        ),
    ],
)
def test_a_config_value_out_of_range_names_the_file_and_its_key(tmp_path, tiny_model_dir, text, expect):
    result, config, out = run_with_config(tmp_path, tiny_model_dir, text)
    assert refusal(result) == f"--config {config}: {expect}"
    assert not out.exists()


def test_a_flag_over_the_file_is_named_as_the_flag(tmp_path, tiny_model_dir):
    """The command line wins over the file: its value's error names the flag, never the file's key."""
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    config = tmp_path / "p.yaml"
    config.write_text("cutoff_len: 0\nval_size: 0.1\n")
    args = [*precompute_args(data, tiny_model_dir, tmp_path / "out"), "--config", str(config)]
    assert refusal(CliRunner().invoke(main, [*args, "--max-length", "1"])) == "--max-length 1: must be in [2, 2**31)"
    config.write_text("cutoff_len: 64\n")
    assert (
        refusal(CliRunner().invoke(main, [*args, "--max-prompt-length", "64"])) == "--max-prompt-length 64: must be positive and smaller than --max-length 64"
    )


@pytest.mark.parametrize(
    ("overrides", "expect"),
    [
        ({"max_length": 64.7}, "--max-length 64.7: expected a whole number"),
        ({"max_length": True}, "--max-length True: expected a whole number"),
        ({"rows_per_shard": [1, 2]}, "--rows-per-shard [1, 2]: expected a whole number"),
        ({"eval_fraction": True}, "--eval-fraction True: expected a number"),
        ({"overwrite": "yes"}, "--overwrite 'yes': expected True or False"),
        ({"out": 5}, "--out 5: expected a path"),
        ({"chat_template": True}, "--chat-template True: expected a path"),
        ({"data": ("a.jsonl", 7)}, "--data 7: expected a path"),
        ({"model": None}, "--model None: expected text"),
        # The column maps are checked too (formats/config_types.py, one checker for both
        # commands): a wrong type was taken here, to fail wherever it was first used.
        ({"columns": 5}, "--columns 5: expected ColumnMap"),
        ({"sharegpt": None}, "--sharegpt None: expected ShareGPTMap"),
        ({"alpaca": "alpaca"}, "--alpaca 'alpaca': expected AlpacaMap"),
        ({"max_length": 2**31}, "--max-length 2147483648: must be in [2, 2**31)"),
        ({"seed": 2**32}, "--seed 4294967296: must be in [0, 2**32)"),
        ({"batch_tokens": 0}, "--batch-tokens 0: must be in [1, 2**31)"),
        ({"max_length": 64, "max_prompt_length": 64}, "--max-prompt-length 64: must be positive and smaller than --max-length 64"),
    ],
)
def test_the_python_api_checks_the_same(tmp_path, overrides, expect):
    out = tmp_path / "out"
    with pytest.raises(InputError) as refused:
        PrecomputeConfig(**{"data": (tmp_path / "rows.jsonl",), "model": "unused", "out": out, **overrides})
    assert str(refused.value) == expect
    assert not out.exists()


def test_text_paths_are_taken_as_paths(tmp_path, tiny_model_dir):
    """`out` as text was an AttributeError traceback in the pipeline, after the model had loaded;
    every path field is a Path, as the CLI gives it, and a --model path is its text."""
    cfg = PrecomputeConfig(data=str(tmp_path / "a.jsonl"), model=tiny_model_dir, out=str(tmp_path / "out"), chat_template=str(tmp_path / "t.jinja"))
    assert (cfg.data, cfg.out, cfg.chat_template) == ((tmp_path / "a.jsonl",), tmp_path / "out", tmp_path / "t.jinja")
    assert isinstance(cfg.out, Path) and cfg.model == str(tiny_model_dir)
    cfg = PrecomputeConfig(data=["a.jsonl", Path("b.jsonl")], model="m", out="o", eval_data=("e.jsonl",), eval_fraction=0)
    assert (cfg.data, cfg.eval_data, cfg.out) == ((Path("a.jsonl"), Path("b.jsonl")), (Path("e.jsonl"),), Path("o"))
    assert type(cfg.eval_fraction) is float  # as --eval-fraction 0 gives it


def test_a_run_with_text_paths_finishes(tmp_path, tiny_model_dir, monkeypatch):
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    monkeypatch.chdir(tmp_path)
    result = kto.precompute.run(PrecomputeConfig(data=("rows.jsonl",), model=str(tiny_model_dir), out="cache", max_length=64))
    assert result.cache == Path("cache") and read_manifest(tmp_path / "cache").content.max_length == 64
    assert data.is_file()


def test_numpy_integers_are_taken_as_python_ints(tmp_path):
    """The manifest is JSON, which has no numpy int64."""
    cfg = PrecomputeConfig(data=(tmp_path / "rows.jsonl",), model="unused", out=tmp_path / "out", max_length=np.int64(64), seed=np.uint32(7))
    assert (cfg.max_length, cfg.seed, cfg.prompt_cap) == (64, 7, 32)
    assert type(cfg.max_length) is int and type(cfg.seed) is int
    # numpy's bools (a DataFrame cell, a mask) are switches, as Python's: they were refused.
    cfg = PrecomputeConfig(data=(tmp_path / "rows.jsonl",), model="unused", out=tmp_path / "out", overwrite=np.bool_(True))
    assert cfg.overwrite is True
    with pytest.raises(InputError, match="--overwrite 1: expected True or False"):
        PrecomputeConfig(data=(tmp_path / "rows.jsonl",), model="unused", out=tmp_path / "out", overwrite=1)


def test_the_largest_values_allowed_run_end_to_end(tmp_path, tiny_model_dir):
    """Each bound is one the pipeline holds: at every integer's largest value the run finishes
    (pair_rows' numpy arithmetic, which overflowed on a larger --max-length, included)."""
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    out = tmp_path / "out"
    most = str(2**31 - 1)
    flags = ["--max-length", most, "--max-prompt-length", str(2**31 - 2), "--rows-per-shard", most, "--batch-tokens", most]
    flags += ["--chunk-size", most, "--seed", str(2**32 - 1), "--max-samples", str(2**63 - 1), "--eval-fraction", "0.25"]
    args = ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), *flags]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    content = read_manifest(out).content
    assert (content.max_length, content.seed) == (2**31 - 1, 2**32 - 1)


def test_the_cutoff_len_default_is_said_only_when_the_command_line_does_not_set_max_length(tmp_path):
    """A LLaMA-Factory file without cutoff_len cuts at its 2048, said in a line; with --max-length
    64 on the command line the line said 2048 while the cache was cut at 64."""
    config = tmp_path / "lf.yaml"
    config.write_text(f"stage: kto\nmodel_name_or_path: {tmp_path / 'no-model'}\ndata: [{tmp_path / 'x.jsonl'}]\nout: {tmp_path / 'c'}\n")
    said = "not given, LLaMA-Factory's default: cutoff_len 2048"
    silent = CliRunner().invoke(main, ["--config", str(config)])
    flagged = CliRunner().invoke(main, ["--config", str(config), "--max-length", "64"])
    assert silent.exit_code == flagged.exit_code == 2  # stopped at the missing model, after the notes
    assert said in silent.output and said not in flagged.output, (silent.output, flagged.output)


def test_replace_derives_the_prompt_cap_from_the_new_max_length(tmp_path):
    """max_prompt_length left out is max_length // 2, as the CLI makes it. The default was
    written into the frozen field, so dataclasses.replace(cfg, max_length=...) kept the old
    cap (a sweep cut prompts at 50 of 4000) or refused one the user never gave (512 >= 256)."""
    import dataclasses

    cfg = PrecomputeConfig(data=(tmp_path / "rows.jsonl",), model="unused", out=tmp_path / "out", max_length=100)
    assert cfg.prompt_cap == 50 and cfg.max_prompt_length is None
    assert dataclasses.replace(cfg, max_length=4000).prompt_cap == 2000
    assert dataclasses.replace(PrecomputeConfig(data=(tmp_path / "rows.jsonl",), model="unused", out=tmp_path / "out"), max_length=256).prompt_cap == 128
    assert dataclasses.replace(cfg, max_prompt_length=30, max_length=4000).prompt_cap == 30  # given: kept
