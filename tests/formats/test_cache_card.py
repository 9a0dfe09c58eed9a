"""The cache's dataset card (README.md): its YAML `configs:` make `datasets.load_dataset(CACHE)`
(and the Hub's dataset viewer) read the shards as a train split and eval/'s as an eval split,
where HF's default patterns took eval/ for a `test` split, never read the train shards and then
parsed manifest.json and tokenizer/*.json as data. The card changes nothing else: not the
fingerprint, the shard bytes, kto-inspect verify, a resumed run or an --overwrite."""

import hashlib
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, write_rows

from kto.formats import schema as S
from kto.formats.hub import CARD_MARKER, CARD_NAME
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main as precompute
from kto.precompute.output import cache_writes_temp


@pytest.fixture(scope="module")
def split_cache(tmp_path_factory, tiny_model_dir) -> tuple[Path, list[str]]:
    """A finished cache with eval/ (--eval-fraction 0.25), and the command that made it."""
    root = tmp_path_factory.mktemp("card-cache")
    args = precompute_args(write_rows(root / "chat.jsonl", chat_rows()), tiny_model_dir, root / "cache", "--eval-fraction", "0.25")
    result = CliRunner().invoke(precompute, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root / "cache", args


def shard_ids(folder: Path) -> list[str]:
    ids = []
    for entry in read_manifest(folder).shards:
        with pa.memory_map(str(folder / entry.name)) as source:
            ids += pa.ipc.open_file(source).read_all().column("id").to_pylist()
    return ids


def load(cache: Path, tmp_path: Path):
    import datasets

    return datasets.load_dataset(str(cache), cache_dir=str(tmp_path / "hf-datasets"))


def test_load_dataset_reads_the_train_and_eval_splits(split_cache, tmp_path):
    cache, _ = split_cache
    loaded = load(cache, tmp_path)
    assert set(loaded) == {"train", "eval"}
    for split, folder in (("train", cache), ("eval", cache / S.EVAL_DIR)):
        assert loaded[split].column_names == S.SHARD_SCHEMA.names
        assert loaded[split].num_rows == read_manifest(folder).counts.rows > 0
        assert loaded[split]["id"] == shard_ids(folder)  # shard order, no row of the other split


def test_a_cache_without_eval_has_one_split(tiny_cache, tmp_path):
    loaded = load(tiny_cache, tmp_path)
    assert set(loaded) == {"train"} and loaded["train"]["id"] == shard_ids(tiny_cache)
    card = (tiny_cache / CARD_NAME).read_text()
    assert "eval/" not in card.split("---")[1]  # the YAML header declares no eval split


def test_the_card_says_what_the_folder_is(split_cache):
    cache, _ = split_cache
    card = (cache / CARD_NAME).read_text()
    manifest = read_manifest(cache)
    assert manifest.fingerprint in card and read_manifest(cache / S.EVAL_DIR).fingerprint in card
    assert "kto-train --cache hf:" in card and 'pl.scan_ipc("shard-*.arrow")' in card
    assert CARD_MARKER in card and not (cache / S.EVAL_DIR / CARD_NAME).exists()


def test_a_rerun_resumes_and_an_overwrite_replaces_the_card(split_cache, tmp_path):
    """The card is the cache's own file: a rerun of the same command resumes (the card rewritten
    the same, the shards and manifest untouched), kto-inspect verify passes, and --overwrite of
    another configuration replaces it."""
    import shutil

    from kto.inspection.cli import main as inspect

    cache, args = split_cache
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    args = [str(copy) if a == str(cache) else a for a in args]
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in copy.iterdir() if p.is_file() and not p.name.startswith(".")}
    rerun = CliRunner().invoke(precompute, args, catch_exceptions=False)
    assert rerun.exit_code == 0, rerun.output
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in copy.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before and CARD_NAME in after
    verified = CliRunner().invoke(inspect, ["verify", str(copy)])
    assert verified.exit_code == 0 and "ok: " in verified.output, verified.output

    overwrite = CliRunner().invoke(precompute, [*args, "--seed", "1", "--overwrite"], catch_exceptions=False)
    assert overwrite.exit_code == 0, overwrite.output
    assert read_manifest(copy).fingerprint in (copy / CARD_NAME).read_text()

    # The card made the user's own (as its marker line says: delete the line): a rerun keeps it,
    # where the cache's survey called it foreign and refused even --overwrite; --overwrite,
    # which replaces the whole cache, replaces it.
    edited = (copy / CARD_NAME).read_text().replace(CARD_MARKER, "") + "My notes.\n"
    (copy / CARD_NAME).write_text(edited)
    rerun = CliRunner().invoke(precompute, [*args, "--seed", "1"], catch_exceptions=False)
    assert rerun.exit_code == 0 and (copy / CARD_NAME).read_text() == edited, rerun.output
    replaced = CliRunner().invoke(precompute, [*args, "--seed", "2", "--overwrite"], catch_exceptions=False)
    assert replaced.exit_code == 0 and CARD_MARKER in (copy / CARD_NAME).read_text(), replaced.output


def test_a_killed_runs_card_temp_is_ours():
    assert cache_writes_temp(CARD_NAME, "tmp") and not cache_writes_temp(CARD_NAME, "old")


def test_a_card_of_an_earlier_wording_is_still_the_caches_and_eval_readme_the_users(split_cache, tmp_path):
    """Cards are recognised by the marker's start, so one written with an earlier wording is
    rewritten by a rerun (it was kept as the user's edit, stale); a README.md in eval/, where no
    card is written, is the user's file: --overwrite refuses it instead of deleting it."""
    import shutil

    cache, args = split_cache
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    args = [str(copy) if a == str(cache) else a for a in args]
    fresh = (copy / CARD_NAME).read_text()
    older = "<!-- kto-precompute card: rewritten while this line is here; delete the line to keep your edits -->"
    (copy / CARD_NAME).write_text("STALE\n" + fresh.replace(CARD_MARKER, older))
    rerun = CliRunner().invoke(precompute, args, catch_exceptions=False)
    assert rerun.exit_code == 0 and (copy / CARD_NAME).read_text() == fresh, rerun.output
    (copy / S.EVAL_DIR / CARD_NAME).write_text("my notes on the eval split\n")
    refused = CliRunner().invoke(precompute, [*args, "--seed", "3", "--overwrite"])
    assert refused.exit_code == 2 and (copy / S.EVAL_DIR / CARD_NAME).is_file(), refused.output
