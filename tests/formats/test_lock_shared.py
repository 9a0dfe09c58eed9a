"""A reader opening a cache takes a shared lock on its manifest.json (formats/held_shards.py, through
formats/lock.py share_lock), so a `kto-precompute --overwrite` swap (precompute/output.py swap_in,
an exclusive lock) waits for it and the reader gets the cache it began to open, every shard held.
And the open-files budget of a cache is given back when it closes: a process that opens and
closes caches again and again (a notebook, repeated API calls) still holds the shards of the next
one, which a swap then cannot take from under it."""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from pathlib import Path

import pytest
from conftest import chat_rows, flock_saying_when_it_waits, precompute_args, write_rows
from conftest import run_precompute as run_cli

from kto.formats import held_shards
from kto.formats import schema as S
from kto.formats.cache import open_cache
from kto.formats.manifest import read_manifest
from kto.precompute import output, pipeline
from kto.precompute.output import NEXT


class Killed(Exception):
    """Stands for a kill of kto-precompute just before its swap."""


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    """An old cache in `c/`, a copy of it (`old/`), and `killed/`: `c/` after an --overwrite
    killed just before its swap (`.next/` holds the finished new cache). Made once."""
    root = tmp_path_factory.mktemp("lock-shared")
    data = write_rows(root / "chat.jsonl", chat_rows())
    args = precompute_args(data, tiny_model_dir, root / "c")
    assert run_cli(*args).exit_code == 0
    shutil.copytree(root / "c", root / "old")

    def kill(_out):
        raise Killed

    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "swap_in", kill)
    try:
        result = run_cli(*args, "--seed", "1", "--overwrite")  # another KL pairing: other shard bytes, same names
    finally:
        mp.undo()
    assert isinstance(result.exception, Killed), result.output
    shutil.copytree(root / "c", root / "killed")
    return root


@pytest.fixture
def before_swap(made) -> tuple[Path, Path]:
    """(c/ as the killed --overwrite left it, at the path its command named; the old cache's copy)."""
    out = made / "c"
    shutil.rmtree(out)
    shutil.copytree(made / "killed", out)
    assert (out / NEXT / S.MANIFEST_NAME).is_file()
    return out, made / "old"


def same_cache(reader, reference: Path) -> bool:
    with open_cache(reference) as copy:
        return reader.num_shards == copy.num_shards and all(reader.read_shard(k).equals(copy.read_shard(k)) for k in range(copy.num_shards))


def test_the_swap_waits_for_a_reader_between_its_manifest_and_its_shards(before_swap, monkeypatch):
    """open_cache paused while it reads manifest.json: the swap, started then, moves nothing until
    the reader has opened every shard, and the reader reads the old cache it began to open."""
    out, reference = before_swap
    real_read, real_flock = held_shards.read_manifest, fcntl.flock
    reading, go, waiting, ended = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    moves, failed, opened = [], [], []

    def paused_read(folder):
        if not reading.is_set():
            reading.set()
            assert go.wait(60)
        return real_read(folder)

    flock = flock_saying_when_it_waits(real_flock, waiting)

    def swap():
        try:
            output.swap_in(out)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failed.append(exc)
        finally:
            ended.set()

    real_move = output._move
    monkeypatch.setattr(held_shards, "read_manifest", paused_read)
    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(output, "_move", lambda src, dst: (moves.append(src.name), real_move(src, dst)))
    reader = threading.Thread(target=lambda: opened.append(open_cache(out)))
    reader.start()
    swapper = None
    try:
        assert reading.wait(60)
        swapper = threading.Thread(target=swap)
        swapper.start()
        for _ in range(6000):  # until the swap waits for the lock, or has ended (at most a minute)
            if waiting.wait(0.01) or ended.is_set():
                break
        assert waiting.is_set() or ended.is_set(), "the swap neither waited nor finished"
        assert moves == [], f"the swap moved {moves} while a reader was opening the cache"
    finally:
        go.set()
        reader.join(60)
        if swapper is not None:
            swapper.join(60)
    assert failed == [] and moves[-1] == S.MANIFEST_NAME and not (out / NEXT).exists()
    assert len(opened) == 1, "the reader did not open the cache"
    with opened[0] as cache:
        assert cache.manifest.fingerprint == read_manifest(reference).fingerprint != read_manifest(out).fingerprint
        assert same_cache(cache, reference)  # every shard the old one's, read after the swap unlinked them


def test_a_cache_opened_after_many_were_closed_still_holds_its_shards_through_a_swap(before_swap, monkeypatch):
    """Each open cache reserves two descriptors per shard until it closes. Under an open-files
    limit with room for one cache's, caches opened and closed in turn must each give theirs back:
    else the next one is read by path, and a swap meanwhile makes its reads fail ("rebuilt")."""
    import resource

    out, reference = before_swap
    shards = len(read_manifest(out).shards)
    low = len(os.listdir("/proc/self/fd")) + held_shards.SPARE_DESCRIPTORS + 2 * (2 * shards)  # one cache's, and as much to spare
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (low, low))
    for _ in range(5):
        with open_cache(out) as cache:
            cache.read_shard(0)
    reader = open_cache(out)
    output.swap_in(out)
    assert read_manifest(out).fingerprint != reader.manifest.fingerprint
    assert same_cache(reader, reference)
    reader.close()
