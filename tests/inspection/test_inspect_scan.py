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
        "import sys, kto.formats, kto.formats.shards, kto.formats.examples, kto.train.loop, kto.precompute.pipeline; "
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
