"""kto.formats.scan: the polars route, and the import rules around it."""

import importlib
import json
import subprocess
import sys

import pytest
from conftest import chat_rows

from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest

MODULES = [
    "kto.formats",
    "kto.formats.scanning",
    "kto.inspection",
    "kto.inspection.cli",
    "kto.inspection.summary",
    "kto.inspection.verify",
    "kto.inspection.rows",
    "kto.inspection.runlog",
    "kto.inspection.report",
    "kto.inspection.score",
    "kto.inspection.text",
]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


def test_importing_formats_and_train_does_not_import_polars():
    code = (
        "import sys, kto.formats, kto.formats.shards, kto.precompute.inputs.examples, kto.train.loop, kto.precompute.pipeline; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('polars', 'matplotlib'))))"
    )
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_scan_is_the_function_whatever_was_imported_first():
    # Importing the module that defines scan must not shadow kto.formats.scan (the function).
    code = "import kto.formats.scanning, kto.formats; from kto.formats import scan; print(callable(kto.formats.scan), callable(scan))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_scan_reads_every_row_in_manifest_order(tiny_cache):
    import polars as pl

    import kto.formats

    df = kto.formats.scan(tiny_cache).collect()
    manifest = read_manifest(tiny_cache)
    rows = chat_rows()
    assert df.columns == S.SHARD_SCHEMA.names
    assert df.height == len(rows) == manifest.counts.rows
    assert df["label"].sum() == sum(r["label"] for r in rows)
    assert df["id"].n_unique() == df.height
    # The README recipe: the least likely completions, lazily.
    worst = kto.formats.scan(tiny_cache).sort("ref_logp").head(3).select("id", "ref_logp").collect()
    assert worst["ref_logp"].to_list() == sorted(df["ref_logp"].to_list())[:3]
    assert isinstance(kto.formats.scan(tiny_cache), pl.LazyFrame)


def test_scan_ignores_a_stray_shard(tiny_cache, tmp_path):
    import shutil

    import kto.formats

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    shutil.copy(cache / "shard-00000.arrow", cache / "shard-00099.arrow")
    assert kto.formats.scan(cache).collect().height == read_manifest(cache).counts.rows


def test_scan_errors_name_the_path(tmp_path, tiny_cache):
    import shutil

    import kto.formats

    with pytest.raises(InputError, match="no such cache directory"):
        kto.formats.scan(tmp_path / "nope")
    with pytest.raises(InputError, match="no manifest"):
        kto.formats.scan(tmp_path)
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    (cache / "shard-00002.arrow").unlink()
    with pytest.raises(InputError, match=r"shard-00002\.arrow: listed in the manifest but missing"):
        kto.formats.scan(cache)


def test_scan_checks_shards_as_every_reader_does(tmp_path, tiny_cache):
    """scan opens the cache through formats/cache.py: a shard whose bytes are not the manifest's
    is refused with one line (sha256), and a truncated one too, before polars reads anything."""
    import shutil

    import kto.formats

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    (cache / ".verified.json").unlink(missing_ok=True)
    path = cache / "shard-00001.arrow"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a buffer: still a readable Arrow file
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"shard-00001\.arrow: sha256 .* does not match the manifest's"):
        kto.formats.scan(cache)


def test_verify_writes_no_stamp_and_always_rehashes(tmp_path, tiny_cache):
    """`kto-inspect verify` opens with stamps=False: it trusts no `.verified.json` and writes none."""
    import shutil

    from kto.formats.cache import open_cache
    from kto.inspection.verify import verify

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    (cache / ".verified.json").unlink(missing_ok=True)
    assert all(r.ok for r in verify(cache, check_tokenizer=False))
    assert not (cache / ".verified.json").exists()
    open_cache(cache).check_sha256(0)  # a stamped reader records the shard it hashed
    assert (cache / ".verified.json").exists()
    path = cache / "shard-00000.arrow"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime, but a new ctime
    with pytest.raises(InputError, match="sha256"):
        open_cache(cache).check_sha256(0)  # the stamp (size, mtime, ctime, inode) no longer holds
    problems = [p for r in verify(cache, check_tokenizer=False) for p in r.problems]
    assert any(f"{path}: sha256" in p for p in problems)
