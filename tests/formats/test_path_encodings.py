"""A path whose name is not UTF-8 (`--out "$(printf 'r\\xfe')"`) is refused in one line before any
work, as --data's file names were already: pyarrow encodes every path as UTF-8 and tokenizers'
save_pretrained writes through one, so kto-train trained every step and then died in a
UnicodeEncodeError, kto-precompute died in pyarrow's encode_file_path, and a sound cache copied
into such a folder read as "not a readable shard". The refusal comes before torch and
transformers are imported (run here with both blocked, as tests/test_early_refusals.py does)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kto.formats.errors import InputError

BLOCKED = "import sys; sys.modules.update(torch=None, transformers=None); sys.argv[0] = 'kto'; from {} import main; main()"
BAD = os.fsdecode(b"r\xfe")  # 'r\udcfe': the byte 0xfe read as a lone surrogate, as Python reads argv


def refused(module: str, *args: str | Path) -> str:
    """The one stderr line of `python -m module args` (exit 2) run without torch and transformers."""
    code = BLOCKED.format(module)
    proc = subprocess.run([sys.executable, "-c", code, *map(os.fspath, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def said(flag: str, path: str | Path) -> str:
    return f"{flag} {ascii(os.fspath(path))}: the path is not valid UTF-8, which pyarrow and tokenizers need; rename it"


@pytest.fixture
def cache(tmp_path, tiny_cache) -> Path:
    return Path(shutil.copytree(tiny_cache, tmp_path / "cache"))


def test_train_out(tmp_path, cache, model_dir):
    out = tmp_path / BAD
    assert refused("kto.train.cli", "--cache", cache, "--model", model_dir, "--out", out) == f"kto-train: error: {said('--out', out)}"
    assert not out.exists()


def test_train_cache_and_eval_cache(tmp_path, cache, model_dir):
    bad = Path(shutil.copytree(cache, tmp_path / BAD))  # a sound cache, in a folder so named
    line = refused("kto.train.cli", "--cache", bad, "--model", model_dir, "--out", tmp_path / "run")
    assert line == f"kto-train: error: {said('--cache', bad)}"
    line = refused("kto.train.cli", "--cache", cache, "--eval-cache", bad, "--model", model_dir, "--out", tmp_path / "run")
    assert line == f"kto-train: error: {said('--eval-cache', bad)}"
    assert not (tmp_path / "run").exists()


def test_train_model(tmp_path, cache, model_dir):
    bad = Path(shutil.copytree(model_dir, tmp_path / BAD))
    line = refused("kto.train.cli", "--cache", cache, "--model", bad, "--out", tmp_path / "run", "--lora-r", "2")
    assert line == f"kto-train: error: {said('--model', bad)}"


def test_precompute_out_and_model(tmp_path, model_dir):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "p", "completion": "c", "label": true}\n')
    out = tmp_path / BAD
    line = refused("kto.precompute.cli", "--data", data, "--model", model_dir, "--out", out)
    assert line == f"kto-precompute: error: {said('--out', out)}"
    assert not out.exists()
    bad = Path(shutil.copytree(model_dir, tmp_path / f"m{BAD}"))
    line = refused("kto.precompute.cli", "--data", data, "--model", bad, "--out", tmp_path / "cache")
    assert line == f"kto-precompute: error: {said('--model', bad)}"


@pytest.mark.parametrize("command", ["verify", "summary", "rows"])
def test_inspect_cache(tmp_path, cache, command):
    bad = Path(shutil.copytree(cache, tmp_path / BAD))
    assert refused("kto.inspection.cli", command, bad) == f"kto-inspect: error: {said('CACHE', bad)}"


def test_inspect_score_out(tmp_path, cache, model_dir):
    out = tmp_path / BAD / "scores.parquet"
    line = refused("kto.inspection.cli", "score", cache, "--model", model_dir, "--out", out)
    assert line == f"kto-inspect: error: {said('--out', out)}"


def test_python_api(tmp_path, cache, model_dir):
    from kto.train.config import TrainConfig

    with pytest.raises(InputError, match=r"^--out 'r\\udcfe': the path is not valid UTF-8"):
        TrainConfig(cache=cache, model=str(model_dir), out=BAD)
