"""The manifest reader refuses shard names that leave the cache or repeat, and counts that are
not integers or disagree with the shard list: every reader (training, scan, inspect) goes
through it, so none of them can be pointed at another file."""

import json
import shutil

import pytest
from conftest import manifest_refusal as refused

import kto.formats
from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest


@pytest.fixture
def cache(tiny_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    return out


def edit_manifest(cache, edit):
    """Edit manifest.json's shards or counts; neither is fingerprinted content, so only the
    damage under test remains."""
    path = cache / S.MANIFEST_NAME
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize(
    "name, why",
    [
        ("/etc/shard-00000.arrow", "is an absolute path; shard names are plain file names"),
        ("../other-cache/shard-00000.arrow", "contains '..'; shard names are plain file names"),
        ("..", "contains '..'; shard names are plain file names"),
        ("sub/shard-00000.arrow", "contains a path separator; shard names are plain file names"),
        ("sub\\shard-00000.arrow", "contains a path separator; shard names are plain file names"),
        ("shard-*.arrow", "is not a shard name (shard-N.arrow)"),  # pl.scan_ipc would glob it
        ("manifest.json", "is not a shard name (shard-N.arrow)"),
    ],
)
def test_shard_names_that_leave_the_cache(cache, name, why):
    edit_manifest(cache, lambda m: m["shards"][1].__setitem__("name", name))
    assert refused(cache) == f"shards[1].name {name!r} {why}"


def test_a_shard_listed_twice(cache):
    def edit(m):
        m["shards"][2] = dict(m["shards"][1])
        m["counts"]["rows"] = sum(s["rows"] for s in m["shards"])

    edit_manifest(cache, edit)
    assert refused(cache) == "shards[2].name 'shard-00001.arrow' is listed twice"


@pytest.mark.parametrize("key, value", [("rows", 16.0), ("desirable", True), ("truncated", "16"), ("dropped", -1), ("prompt_tokens", None)])
def test_counts_must_be_integers(cache, key, value):
    edit_manifest(cache, lambda m: m["counts"].__setitem__(key, value))
    assert refused(cache) == f"counts.{key} {value!r} is not a non-negative integer"


@pytest.mark.parametrize("value", [5.0, "5", True, -5])
def test_shard_rows_must_be_integers(cache, value):
    edit_manifest(cache, lambda m: m["shards"][0].__setitem__("rows", value))
    assert refused(cache) == f"shards[0].rows {value!r} (shard-00000.arrow) is not a non-negative integer"


def test_shard_rows_must_add_up_to_counts_rows(cache):
    edit_manifest(cache, lambda m: m["shards"][3].__setitem__("rows", 2))
    assert refused(cache) == "its shard entries list 17 rows, counts.rows is 16"


def test_every_reader_refuses(cache):
    from kto.formats.cache import open_cache

    edit_manifest(cache, lambda m: m["shards"][0].__setitem__("name", "../shard-00000.arrow"))
    for read in (kto.formats.scan, open_cache):
        with pytest.raises(InputError, match=r"shards\[0\].name '../shard-00000.arrow' contains '..'"):
            read(cache)


@pytest.mark.parametrize(("version", "advice"), [(S.FORMAT_VERSION - 1, "re-run kto-precompute with this kto"), (S.FORMAT_VERSION + 1, "use a newer kto")])
def test_another_format_version_is_refused_naming_both(cache, version, advice):
    """An older or a newer cache: one line that names its version and ours, checked before
    anything else of the manifest is read (a newer kto may lay the rest out differently), and
    every reader refuses it (they all read the manifest through read_manifest)."""
    edit_manifest(cache, lambda m: m.update(format_version=version, content={"from": "the future"}))
    assert refused(cache) == f"cache format version {version}, this kto reads format version {S.FORMAT_VERSION} only; {advice}"
    with pytest.raises(InputError, match=f"cache format version {version}, this kto reads format version {S.FORMAT_VERSION}"):
        kto.formats.scan(cache)


def test_content_round_trips_byte_for_byte(cache):
    """The typed content writes back exactly the JSON it was read from: manifest.json of an
    existing cache is byte-identical after a read and a write, so its fingerprint is unchanged."""
    from kto.formats.manifest import CacheContent

    path = cache / S.MANIFEST_NAME
    before = path.read_bytes()
    manifest = read_manifest(cache)
    assert isinstance(manifest.content, CacheContent) and manifest.content.split == "train"
    path.unlink()
    manifest.write(cache)
    assert path.read_bytes() == before
    raw = json.loads(before)["content"]
    assert CacheContent.from_json(raw).to_json() == raw and manifest.fingerprint == json.loads(before)["fingerprint"]


def test_a_manifest_missing_a_part_or_of_the_wrong_shape_is_told_plainly(cache):
    """These read "unreadable manifest (KeyError: 'layout')" and "(TypeError: ShardEntry()
    argument after ** must be a mapping, not int)": Python's words, not the file's."""
    before = json.loads((cache / S.MANIFEST_NAME).read_text())
    edit_manifest(cache, lambda m: m.pop("layout"))
    assert refused(cache) == "lacks layout"
    edit_manifest(cache, lambda m: m.update(layout=before["layout"], counts=[1, 2]))
    assert refused(cache) == "counts is not a JSON object"
    edit_manifest(cache, lambda m: m.update(counts={**before["counts"], "colour": 1}))
    assert refused(cache) == "counts has keys this kto does not know (colour); was the cache made by a newer kto?"
    edit_manifest(cache, lambda m: m.update(counts=before["counts"], shards=[7]))
    assert refused(cache) == "shards[0] is not a JSON object"
    edit_manifest(cache, lambda m: m.update(shards=[{"name": "shard-00000.arrow"}]))
    assert refused(cache) == "shards[0] lacks rows, sha256"


def test_content_keys_are_checked(cache):
    """An unknown content key (a newer kto of the same version would write one only if it were
    optional, so this is an edit or a bug) and a missing one are refused with one line."""
    edit_manifest(cache, lambda m: m["content"].update(colour="blue"))
    assert refused(cache) == "content has keys this kto does not know (colour); was the cache made by a newer kto?"
    edit_manifest(cache, lambda m: (m["content"].pop("colour"), m["content"].pop("seed")))
    assert refused(cache) == "content lacks seed"
