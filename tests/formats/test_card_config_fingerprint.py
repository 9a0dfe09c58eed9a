"""`datasets.load_dataset(CACHE)` reads the folder's current shards.

datasets keeps its own copy of a local folder under HF_DATASETS_CACHE keyed by the folder's base
name, the config name and a hash of the card's `configs:` (the glob patterns, never the files
behind them). With a fixed `config_name: default`, two caches in folders of the same base name, or
one folder rebuilt with --overwrite, shared one copy: whichever was loaded first was returned for
all of them. The card's config name carries the cache's fingerprints, so another cache is another
copy, and a single config is still picked without naming it."""

import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, text_rows, write_rows

from kto.formats import schema as S
from kto.formats.hub import CARD_NAME, card_config_name
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main as precompute


def shard_ids(folder) -> list[str]:
    ids = []
    for entry in read_manifest(folder).shards:
        with pa.memory_map(str(folder / entry.name)) as source:
            ids += pa.ipc.open_file(source).read_all().column("id").to_pylist()
    return ids


def loaded_ids(cache, hf_cache) -> dict[str, list[str]]:
    import datasets

    loaded = datasets.load_dataset(str(cache), cache_dir=str(hf_cache))
    return {split: list(loaded[split]["id"]) for split in loaded}


def expected_ids(cache) -> dict[str, list[str]]:
    splits = {"train": shard_ids(cache)}
    if (cache / S.EVAL_DIR / S.MANIFEST_NAME).is_file():
        splits["eval"] = shard_ids(cache / S.EVAL_DIR)
    return splits


def build(out, name: str, rows, model, *extra: str) -> None:
    data = write_rows(out.parent / name, rows)  # a row's id is FILE:LINE: another file name, other ids
    result = CliRunner().invoke(precompute, precompute_args(data, model, out, *extra), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_same_base_name_and_rebuilt_in_place_each_read_right(tiny_model_dir, tmp_path):
    pytest.importorskip("datasets")  # the `hf` extra; in the test, so collection stays light
    hf_cache = tmp_path / "hf-datasets"  # one datasets cache for every load, as a user has
    first, second = tmp_path / "a" / "cache", tmp_path / "b" / "cache"
    first.parent.mkdir(), second.parent.mkdir()
    build(first, "chat.jsonl", chat_rows(), tiny_model_dir, "--eval-fraction", "0.25")
    build(second, "text.jsonl", text_rows(), tiny_model_dir, "--eval-fraction", "0.25")
    assert set(shard_ids(first)).isdisjoint(shard_ids(second))
    for cache in (first, second, first):
        assert loaded_ids(cache, hf_cache) == expected_ids(cache), cache

    build(first, "more.jsonl", chat_rows() + text_rows(), tiny_model_dir, "--eval-fraction", "0.25", "--overwrite")
    assert loaded_ids(first, hf_cache) == expected_ids(first)  # rebuilt in place: the new rows
    assert len(expected_ids(first)["train"]) + len(expected_ids(first)["eval"]) == 32


def test_the_card_names_its_config_by_the_fingerprints(tiny_cache):
    manifest = read_manifest(tiny_cache)
    card = (tiny_cache / CARD_NAME).read_text()
    name = card_config_name(manifest.fingerprint, None)
    assert name == f"kto-{manifest.fingerprint[:12]}"
    assert f"config_name: {name}\n" in card.split("---")[1]
    with_eval = card_config_name("a" * 64, "b" * 64)
    assert with_eval == f"kto-{'a' * 12}-{'b' * 12}"
