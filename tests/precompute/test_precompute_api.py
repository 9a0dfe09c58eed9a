"""The Python API (`kto.precompute.run`): what the CLI writes, returned; bad input raised, never exited."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, write_rows

import kto.precompute
from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main
from kto.precompute.config import PrecomputeConfig


def tiny_config(data: Path, model: Path, out: Path, **overrides) -> PrecomputeConfig:
    """The PrecomputeConfig of conftest.precompute_args."""
    values = {"max_length": 64, "rows_per_shard": 5, "batch_tokens": 256, **overrides}
    return PrecomputeConfig(data=(data,), model=str(model), out=out, **values)


def test_run_returns_what_the_cli_writes(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    result = kto.precompute.run(tiny_config(data, tiny_model_dir, tmp_path / "api", eval_fraction=0.25))
    cli = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, tmp_path / "cli", "--eval-fraction", "0.25"), catch_exceptions=False)
    assert cli.exit_code == 0, cli.output
    assert isinstance(result, kto.precompute.PrecomputeResult)
    assert result.cache == tmp_path / "api" and result.eval_cache == tmp_path / "api" / "eval"
    for returned, counts, cache in ((result.fingerprint, result.counts, "cli"), (result.eval_fingerprint, result.eval_counts, "cli/eval")):
        on_disk = read_manifest(tmp_path / cache)
        assert returned == on_disk.fingerprint and counts == on_disk.counts
    assert result.counts.rows + result.eval_counts.rows == len(chat_rows())
    for shard in read_manifest(tmp_path / "cli").shards:  # the same bytes, so the same sha256
        assert (tmp_path / "api" / shard.name).read_bytes() == (tmp_path / "cli" / shard.name).read_bytes()


def test_a_rerun_returns_the_finished_cache_without_eval(tiny_cache, tiny_model_dir, tmp_path):
    """A rerun on a finished cache resumes (nothing is scored again) and returns that cache;
    without an eval split the eval fields are None."""
    cache = shutil.copytree(tiny_cache, tmp_path / "cache")
    on_disk = read_manifest(cache)
    result = kto.precompute.run(tiny_config(Path(on_disk.info["data_paths"][0]), tiny_model_dir, cache))
    assert (result.fingerprint, result.counts) == (on_disk.fingerprint, on_disk.counts)
    assert (result.eval_cache, result.eval_fingerprint, result.eval_counts) == (None, None, None)


def test_bad_input_raises_input_error_and_writes_nothing(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "one.jsonl", chat_rows()[:1])
    with pytest.raises(InputError, match="at least 2"):
        kto.precompute.run(tiny_config(data, tiny_model_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="--max-length"):  # the config itself checks its values
        tiny_config(data, tiny_model_dir, tmp_path / "out", max_length=1)


def test_importing_the_package_loads_no_torch():
    code = "import sys, kto.precompute; kto.precompute.PrecomputeConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_api_names_complete_in_a_notebook_and_the_column_maps_import_from_the_package():
    """The packages resolve their names lazily; without `__dir__`, `dir(kto.train)` and IPython's
    completion of `kto.train.` offered nothing. README's `ColumnMap(prompt="question")` is
    importable from `kto.precompute`, as PrecomputeConfig is, and still loads no torch."""
    code = (
        "import sys, kto.precompute, kto.train\n"
        "from kto.precompute import AlpacaMap, ColumnMap, ShareGPTMap\n"
        "print(sorted(n for n in dir(kto.precompute) if not n.startswith('_')))\n"
        "print(sorted(n for n in dir(kto.train) if not n.startswith('_')))\n"
        "print(ColumnMap(prompt='question').prompt, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert {"AlpacaMap", "ColumnMap", "PrecomputeConfig", "PrecomputeResult", "ShareGPTMap", "run"} <= set(eval(out[0]))  # and `inputs`, imported
    assert eval(out[1]) == ["TrainConfig", "TrainResult", "evaluate_model", "run"]
    assert out[2] == "question False"
