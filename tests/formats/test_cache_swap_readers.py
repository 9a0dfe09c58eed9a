"""A reader that opened a cache before `kto-precompute --overwrite` swapped a new one in reads the
cache it opened, to the end.

Found by a hunter: a kto-train started on the old cache opened each shard by path the first time a
batch needed it. `swap_in` renames the new shards onto the same names, so any shard not opened
before the swap was the new file, checked against the old manifest's sha256: the run died with
"the shard was modified or is corrupt; kto-inspect verify checks the whole cache", while verify
said ok. Now `open_cache` opens every listed shard once, under a shared lock on manifest.json that
the swap waits for, and every later read goes through those descriptors: the old inodes stay
readable after the swap unlinks their names. A reader that could not hold them (too many shards
for the open-files limit) is told that the cache was rebuilt, not that it is corrupt."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import chat_rows, flock_saying_when_it_waits, metrics, precompute_args, run_train, write_rows
from conftest import run_precompute as run_cli

from kto.formats import cache as cache_module
from kto.formats import held_shards
from kto.formats import schema as S
from kto.formats.cache import open_cache
from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest
from kto.precompute import output
from kto.precompute.output import NEXT

NEW = ("--seed", "1", "--overwrite")  # another KL pairing: other shard bytes under the same names


class Killed(Exception):
    """Stands for a kill of kto-precompute just before its swap."""


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    """An old cache of one row per shard (16 shards), made once; tests start from a copy."""
    root = tmp_path_factory.mktemp("swap-readers")
    data = write_rows(root / "chat.jsonl", chat_rows())
    args = precompute_args(data, tiny_model_dir, root / "c", "--rows-per-shard", "1")
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    os.rename(root / "c", root / "old")
    return root, args


@pytest.fixture
def old(made, tmp_path):
    """(--out holding a copy of the old cache at the path its command names, the command, a
    second copy to compare with)."""
    root, args = made
    out = root / "c"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(root / "old", out)
    reference = shutil.copytree(root / "old", tmp_path / "reference")
    return out, args, reference


def changed_shards(reader, out: Path) -> list[int]:
    """The shards whose bytes the swap changed under the same name."""
    now = read_manifest(out).shard_sha256
    return [k for k, s in enumerate(reader.manifest.shards) if now.get(s.name) != s.sha256]


def test_a_reader_opened_before_an_overwrite_reads_the_old_cache_to_the_end(old):
    out, args, reference = old
    reader = open_cache(out)
    fingerprint = reader.manifest.fingerprint
    result = run_cli(*args, *NEW)
    assert result.exit_code == 0, result.output
    assert not (out / NEXT).exists() and read_manifest(out).fingerprint != fingerprint
    assert changed_shards(reader, out)  # the test can fail: shards of the same name now differ
    copy = open_cache(reference)
    for k in range(reader.num_shards):  # not one shard was read before the swap
        assert reader.read_shard(k).equals(copy.read_shard(k)), k
    every = np.arange(reader.num_rows)
    assert _same_rows(reader, copy, every)
    reader.close()
    assert open_cache(out).manifest.fingerprint == read_manifest(out).fingerprint != fingerprint


def _same_rows(a, b, rows: np.ndarray) -> bool:
    x, y = a.rows(rows, [S.ID, S.REF_LOGP]), b.rows(rows, [S.ID, S.REF_LOGP])
    return x[S.ID] == y[S.ID] and np.array_equal(x[S.REF_LOGP], y[S.REF_LOGP])


def test_a_kto_train_running_through_an_overwrite_finishes_on_the_cache_it_started_on(old, tiny_model_dir, tmp_path, monkeypatch):
    """The rebuild runs after step 1 (the loader has read at most steps 1 and 2 by then): the
    run finishes, and its metrics are those of an uninterrupted run on a copy of the old cache."""
    from kto.train import loop

    out, args, reference = old
    train = ("--batch-size", "2", "--max-steps", "5", "--lr", "1e-3", "--seed", "3", "--log-every", "1")
    rebuilt = []
    real = loop.after_step

    def rebuild_after_step_1(run, *a, **k):
        if run.position.global_step == 1:
            rebuilt.append(run_cli(*args, *NEW))
        return real(run, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(loop, "after_step", rebuild_after_step_1)
        interrupted = run_train(out, tiny_model_dir, tmp_path / "r", *train)
    assert len(rebuilt) == 1 and rebuilt[0].exit_code == 0, rebuilt[0].output if rebuilt else None
    assert read_manifest(out).fingerprint != read_manifest(reference).fingerprint
    assert interrupted.exit_code == 0, interrupted.output
    straight = run_train(reference, tiny_model_dir, tmp_path / "s", *train)
    assert straight.exit_code == 0, straight.output
    key = lambda lines: [(m["step"], m["loss"], m["grad_norm"]) for m in lines]
    assert key(metrics(tmp_path / "r")) == key(metrics(tmp_path / "s")) and len(metrics(tmp_path / "s")) == 5


def killed_before_the_swap(out: Path, args: list[str], monkeypatch) -> None:
    """Run the --overwrite up to its swap: `.next/` holds the finished new cache."""
    from kto.precompute import pipeline

    def kill(_out):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(pipeline, "swap_in", kill)
        result = run_cli(*args, *NEW)
    assert isinstance(result.exception, Killed), result.output
    assert (out / NEXT / S.MANIFEST_NAME).is_file()


def test_the_swap_waits_for_a_reader_that_is_opening_the_cache(old, monkeypatch):
    """A reader holds manifest.json's shared lock while it reads it and opens the shards; the swap
    takes the exclusive lock before its first removal or rename, so it waits, and nothing of the
    old cache is touched until the reader lets go."""
    out, args, _ = old
    killed_before_the_swap(out, args, monkeypatch)
    moves, waiting = [], threading.Event()
    real_flock, real_move = fcntl.flock, output._move

    monkeypatch.setattr(fcntl, "flock", flock_saying_when_it_waits(real_flock, waiting))
    monkeypatch.setattr(output, "_move", lambda src, dst: (moves.append(src.name), real_move(src, dst)))
    before = {p.name: p.stat().st_ino for p in out.iterdir() if p.is_file()}
    reader = os.open(out / S.MANIFEST_NAME, os.O_RDONLY)
    fcntl.flock(reader, fcntl.LOCK_SH)
    failed = []
    swap = threading.Thread(target=lambda: _catching(failed, waiting, output.swap_in, out))
    swap.start()
    try:
        assert waiting.wait(60), "the swap neither waited nor finished"  # set when it waits, or when it ended
        assert moves == [] and {p.name: p.stat().st_ino for p in out.iterdir() if p.is_file()} == before
    finally:
        os.close(reader)  # lets go of the shared lock
        swap.join(60)
    assert not swap.is_alive() and failed == [] and moves and moves[-1] == S.MANIFEST_NAME
    assert not (out / NEXT).exists() and open_cache(out).manifest.fingerprint == read_manifest(out).fingerprint


def _catching(failed: list, ended: threading.Event, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # reported by the test, not lost in the thread
        failed.append(exc)
    finally:
        ended.set()


def test_a_manifest_replaced_while_it_is_read_is_read_again(old, monkeypatch):
    """Where the swap took no lock (a filesystem without them), the reader still never pairs one
    manifest with another cache's shards: manifest.json replaced between its read and the shard
    opens is seen (another inode) and the cache opened again."""
    out, _, _ = old
    real, reads = held_shards.read_manifest, []

    def read_then_replaced(folder):
        manifest = real(folder)
        reads.append(manifest)
        if len(reads) == 1:
            path = Path(folder) / S.MANIFEST_NAME
            shutil.copy(path, path.with_name("m.new"))
            os.replace(path.with_name("m.new"), path)
        return manifest

    monkeypatch.setattr(held_shards, "read_manifest", read_then_replaced)
    reader = open_cache(out)
    assert len(reads) == 2 and reader.read_shard(0).num_rows == 1
    reader.close()


def test_a_reader_without_held_shards_is_told_the_cache_was_rebuilt(old, monkeypatch):
    """Too many shards for the open-files limit: the reader opens shards by path, as before, and
    a shard of the new cache is named as such, not as modified or corrupt (verify says ok)."""
    out, args, _ = old
    monkeypatch.setattr(held_shards, "descriptors_fit", lambda n: False)
    reader = open_cache(out)
    fingerprint = reader.manifest.fingerprint
    assert run_cli(*args, *NEW).exit_code == 0
    new = read_manifest(out).fingerprint
    k = changed_shards(reader, out)[0]
    with pytest.raises(InputError) as info:
        reader.read_shard(k)
    message = str(info.value)
    assert message == (
        f"{out / reader.manifest.shards[k].name}: {out} was rebuilt since this process read its manifest"
        f" (fingerprint {fingerprint[:16]}… then, {new[:16]}… now: kto-precompute --overwrite?);"
        " the cache this process began on is gone: start again on the new one (kto-train: a new --out)"
    )


def test_a_read_only_cache_opens_and_reads(old, monkeypatch):
    """Files and folders without write permission, and a reader that may open nothing for
    writing (the tests run as root, which a chmod does not stop): shared locks need none."""
    out, _, reference = old
    real_open = os.open

    def read_only_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    modes = {p: p.stat().st_mode for p in [out, *out.rglob("*")]}
    try:
        for p, mode in modes.items():
            p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        monkeypatch.setattr(os, "open", read_only_open)
        reader = open_cache(out)
        copy = open_cache(reference)
        assert all(reader.read_shard(k).equals(copy.read_shard(k)) for k in range(reader.num_shards))
        reader.close()
    finally:
        for p, mode in sorted(modes.items(), reverse=True):
            p.chmod(mode)


def test_closing_the_cache_closes_its_descriptors(old):
    out, _, _ = old
    fds = lambda: set(os.listdir("/proc/self/fd"))
    before = fds()
    with open_cache(out) as reader:
        assert len(fds() - before) >= reader.num_shards
    assert fds() - before == set()
    open_cache(out)  # dropped at once: its descriptors go with it
    assert fds() - before == set()


def test_an_open_files_limit_too_low_for_the_shards_is_raised_or_read_by_path(old, monkeypatch):
    """A soft limit below what the shards need is raised toward the hard one; a hard limit below
    it leaves the shards to be read by path, as before, with every read still checked."""
    import resource

    out, _, reference = old
    copy = open_cache(reference)
    fds = lambda: set(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = len(fds()) + 40  # below the 16 shards' 2 × 16 + 256 spare
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        with open_cache(out) as reader:
            assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > low + 32
            assert all(reader.read_shard(k).equals(copy.read_shard(k)) for k in range(reader.num_shards))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (low, low))
    before = fds()
    with open_cache(out) as reader:
        assert fds() == before  # nothing held
        assert all(reader.read_shard(k).equals(copy.read_shard(k)) for k in range(reader.num_shards))


# Two held caches in one process under a low open-files limit. Each cache's shards need two
# descriptors each in the end (the held one and its memory map's); the second cache used to count
# only the descriptors open when it opened, not the first's memory maps still to come, and a
# kto-train on a 400-shard train cache and a 150-shard eval cache died with EMFILE named as a
# corrupt shard. SPARE_DESCRIPTORS is cut so that a small limit shows it.
TWO_CACHES = """
import os, resource, sys
from kto.formats import held_shards
from kto.formats.cache import open_cache
held_shards.SPARE_DESCRIPTORS = 4
base = len(os.listdir("/proc/self/fd"))
limit = base + 56  # the first: 16 held + 16 maps; the second's 2 x 16 fit beside the first's held, not its maps
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
caches = [open_cache(d) for d in sys.argv[1:3]]
tables = [c.table(k) for c in caches for k in range(c.num_shards)]
print(len(tables), sum(t.num_rows for t in tables), [c._held is None for c in caches])
"""


def test_two_caches_under_a_low_open_files_limit_read_every_shard(old):
    import subprocess
    import sys

    out, _, reference = old
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", TWO_CACHES, str(out), str(reference)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # every shard of both read; the second cache, which would not fit beside the first's memory maps, is read by path
    assert result.stdout.split("\n")[0] == "32 32 [False, True]"


def test_out_of_descriptors_is_named_as_such_not_as_a_corrupt_shard(old, monkeypatch):
    import resource

    out, _, _ = old
    reader = open_cache(out)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    emfile = OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def fail(*_a, **_k):
        raise emfile

    path = out / reader.manifest.shards[0].name
    line = f"{path}: too many open files (limit {soft}): raise it with ulimit -n {max(2 * soft, 4096)} before the command"
    monkeypatch.setattr(cache_module.mmap, "mmap", fail)
    with pytest.raises(InputError) as info:
        reader.map_shard(0)
    assert str(info.value) == line
    monkeypatch.setattr(cache_module, "sha256_fd", fail)
    with pytest.raises(InputError) as info:
        reader.check_sha256(0)
    assert str(info.value) == line
    reader.close()


def test_out_of_descriptors_at_the_manifest_is_named_as_such(old, monkeypatch):
    """Seen in a review: EMFILE opening manifest.json fell through to read_manifest's generic
    read error."""
    import resource

    from kto.formats import held_shards

    out, _, _ = old
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    real_open = os.open

    def no_descriptor_for_the_manifest(path, *args, **kwargs):
        if str(path).endswith("manifest.json"):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(held_shards.os, "open", no_descriptor_for_the_manifest)
    with pytest.raises(InputError) as info:
        open_cache(out)
    assert str(info.value) == f"{out / 'manifest.json'}: too many open files (limit {soft}): raise it with ulimit -n {max(2 * soft, 4096)} before the command"


def test_a_shard_that_cannot_be_opened_is_named_as_such_not_as_corrupt(old, monkeypatch):
    """Seen in a review: a shard whose open failed with EACCES was said to be "not a readable
    shard, truncated or corrupt" with the verify hint, by a re-raised OSError."""
    from kto.formats import held_shards

    out, _, _ = old
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith("shard-00000.arrow"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(held_shards.os, "open", denied)
    reader = open_cache(out)
    monkeypatch.undo()
    path = out / reader.manifest.shards[0].name
    for read in (reader.map_shard, reader.check_sha256, reader.read_shard):
        with pytest.raises(InputError) as info:
            read(0)
        assert str(info.value) == f"{path}: cannot open (Permission denied)"
    reader.close()


def test_a_reader_of_the_old_cache_writes_no_stamps_into_the_new_one(old):
    """An old reader hashing a shard after the swap would have written its stamps (the old
    inodes') into the new cache's `.verified.json`, in place of the new cache's own."""
    out, args, _ = old
    reader = open_cache(out)
    assert run_cli(*args, *NEW).exit_code == 0
    with open_cache(out) as new:
        for k in range(new.num_shards):
            new.check_sha256(k)
    stamps = (out / ".verified.json").read_bytes()
    assert len(json.loads(stamps)) == reader.num_shards  # the test can fail: the new reader wrote its stamps
    for k in range(reader.num_shards):
        reader.check_sha256(k)  # the old cache's bytes, still sound
    assert (out / ".verified.json").read_bytes() == stamps
    reader.close()
    (out / ".verified.json").unlink()
    fresh = open_cache(out)  # and a reader of the cache on disk still writes them
    fresh.check_sha256(0)
    assert list(json.loads((out / ".verified.json").read_text())) == [fresh.manifest.shards[0].name]


def test_a_reader_of_the_manifest_only_holds_no_shard(old):
    out, _, reference = old
    fds = lambda: set(os.listdir("/proc/self/fd"))
    before = fds()
    reader = open_cache(out, hold=False)
    assert fds() - before == set() and reader.manifest.fingerprint == read_manifest(out).fingerprint
    copy = open_cache(reference)
    assert all(reader.read_shard(k).equals(copy.read_shard(k)) for k in range(reader.num_shards))
