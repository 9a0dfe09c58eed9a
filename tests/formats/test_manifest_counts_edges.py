"""Edges of the manifest's count and layout checks that an edited manifest.json can reach:
shard entries listing fewer rows than counts.rows, class counts that no longer add up to
counts.rows, and a short shard before the last one. read_manifest refuses each, naming both
numbers, before any reader trusts the counts."""

import json
import shutil

import pytest
from conftest import manifest_refusal as refused

from kto.formats import schema as S
from kto.formats.manifest import read_manifest


@pytest.fixture
def cache(tiny_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    return out


def edit_manifest(cache, edit) -> dict:
    path = cache / S.MANIFEST_NAME
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))
    return obj


def test_the_untouched_manifest_reads(cache):
    assert read_manifest(cache).counts.rows == 16


def test_shard_entries_listing_fewer_rows_than_counts_rows(cache):
    """counts.rows one more than the shards hold (class counts kept consistent with it, so only
    the shard listing disagrees): a reader would expect a row no shard has."""

    def edit(m):
        m["counts"]["rows"] += 1
        m["counts"]["desirable"] += 1

    edit_manifest(cache, edit)
    assert refused(cache) == "its shard entries list 16 rows, counts.rows is 17"


@pytest.mark.parametrize(("key", "delta"), [("desirable", 1), ("undesirable", -1)])
def test_class_counts_that_do_not_add_up_to_rows(cache, key, delta):
    m = edit_manifest(cache, lambda m: m["counts"].__setitem__(key, m["counts"][key] + delta))
    total = m["counts"]["desirable"] + m["counts"]["undesirable"]
    assert total == 16 + delta
    assert refused(cache) == f"counts.desirable + counts.undesirable is {total}, counts.rows is 16"


def test_a_short_shard_before_the_last_is_refused(cache):
    """Rows moved from the second shard to the last: the total still matches counts.rows and no
    shard is over rows_per_shard, but only the last shard may be short."""

    def edit(m):
        assert len(m["shards"]) >= 3 and m["shards"][1]["rows"] == m["layout"]["rows_per_shard"]
        m["shards"][1]["rows"] -= 1
        m["shards"][-1]["rows"] += 1
        assert m["shards"][-1]["rows"] <= m["layout"]["rows_per_shard"]

    m = edit_manifest(cache, edit)
    per_shard = m["layout"]["rows_per_shard"]
    assert refused(cache) == f"shards[1].rows {per_shard - 1} (shard-00001.arrow) does not fit layout.rows_per_shard {per_shard}"
