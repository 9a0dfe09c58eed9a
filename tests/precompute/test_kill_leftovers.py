"""What a SIGKILL of kto-precompute leaves behind is resumed by the same command, and nothing a
user left in --out is taken for the cache's own.

Found by a hunter's real kills (os.replace, unlink and rmtree wrapped to SIGKILL the process at
their N-th call):
- a kill while a shard was written left `..shard-00000.arrow.tmp-P-T.tmp-P-T` (the journal's
  temp name, written through atomic_path, got a temp name of its own), which no rerun took for
  the cache's: `--out`, eval/ and the --overwrite build in `.next/` were refused for good;
- a kill right after eval/ was made, before `eval/.journal/run.json` was renamed in, left an
  eval/ holding only that temp name, refused the same way;
- a `.lock` (or `.verified.json`) in a folder that no journal or manifest proves a cache was
  taken for the cache's own and overwritten;
- after a kill late in an --overwrite swap, `kto-inspect verify` said only "no manifest; is it a
  finished kto-precompute cache?" instead of how to finish it.

The kills here are in-process: the run dies (an exception) at the chosen os.replace, and the
files that were there at that instant, which a real SIGKILL would have left, are put back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import chat_rows, one_line_error, precompute_args, write_rows
from conftest import run_precompute as run_cli

from kto.formats import schema as S
from kto.formats.atomic import parse_temp_name
from kto.formats.errors import InputError
from kto.inspection.verify import verify
from kto.precompute import output
from kto.precompute.output import NEXT

# The temp name an earlier kto left when killed in a shard's write (a temp name of a temp name).
DOUBLE = "..shard-00001.arrow.tmp-6144-140155436702592.tmp-6144-140155436702592"


class Killed(Exception):
    """Stands for a SIGKILL: raised at the chosen call, nothing after it runs."""


def cache_bytes(out: Path) -> dict[str, bytes]:
    """Every shard and manifest (train and eval) of the cache in `out`."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and (p.match(S.SHARD_GLOB) or p.name == S.MANIFEST_NAME)}


def everything(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir):
    """The commands, an old cache (seed 0), and the caches that uninterrupted runs of seed 0 and
    of seed 1 (--overwrite of the old one) make, all at the same path."""
    root = tmp_path_factory.mktemp("kills")
    data = write_rows(root / "chat.jsonl", chat_rows())
    out = root / "c"
    old = precompute_args(data, tiny_model_dir, out, "--eval-fraction", "0.25", "--rows-per-shard", "4")
    assert run_cli(*old).exit_code == 0
    shutil.copytree(out, root / "old")
    first = cache_bytes(out)
    new = [*old, "--seed", "1", "--overwrite"]
    assert run_cli(*new).exit_code == 0
    second = cache_bytes(out)
    assert first != second and not (out / NEXT).exists()
    shutil.rmtree(out)
    return out, old, new, first, second


def killed_at(monkeypatch, out: Path, args: list[str], where: Path, shard: str) -> None:
    """Run `args` and die at the first os.replace of a temp name in `where` whose name holds
    `shard`; leave `out` as a SIGKILL there leaves it (every file that was there then)."""
    real, left = os.replace, {}

    def replace(src, dst, *a, **k):
        if not left and Path(src).parent == where and shard in Path(src).name:
            left.update(everything(out))
            raise Killed
        return real(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        result = run_cli(*args)
    assert isinstance(result.exception, Killed), result.output
    for name, data in left.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        if not (out / name).exists():
            (out / name).write_bytes(data)


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if parse_temp_name(p.name))


@pytest.mark.parametrize(("split", "flags"), [("train", []), ("eval", ["--overwrite"])])
def test_a_kill_in_a_shard_write_is_resumed_to_the_same_bytes(made, monkeypatch, split, flags):
    out, old, _, first, _ = made
    shutil.rmtree(out, ignore_errors=True)
    folder, shard = (out, "shard-00001.arrow") if split == "train" else (out / S.EVAL_DIR, "shard-00000.arrow")
    killed_at(monkeypatch, out, old, folder, shard)
    left = temps(folder)
    assert len(left) == 1 and parse_temp_name(left[0]) == (shard, "tmp"), left  # one temp name per write
    (folder / DOUBLE).write_bytes(b"partial")  # and the form an earlier kto left
    result = run_cli(*old, *flags)
    assert result.exit_code == 0, result.output
    assert cache_bytes(out) == first and not temps(out) and not temps(out / S.EVAL_DIR)
    assert all(r.ok for r in verify(out, check_tokenizer=False))


def test_a_kill_in_a_shard_write_of_an_overwrite_build_is_resumed(made, monkeypatch):
    out, _, new, _, second = made
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(out.parent / "old", out)
    killed_at(monkeypatch, out, new, out / NEXT, "shard-00001.arrow")
    assert [parse_temp_name(n) for n in temps(out / NEXT)] == [("shard-00001.arrow", "tmp")]
    (out / NEXT / DOUBLE).write_bytes(b"partial")
    result = run_cli(*new)
    assert result.exit_code == 0, result.output
    assert not (out / NEXT).exists() and cache_bytes(out) == second and not temps(out)


def test_a_kill_before_the_eval_journal_is_started_is_resumed(made, monkeypatch):
    """eval/ holds only `.journal/.run.json.tmp-P-T`: the cache's (its parent's journal proves
    --out a cache of ours), not the user's."""
    out, old, _, first, _ = made
    shutil.rmtree(out, ignore_errors=True)
    journal = out / S.EVAL_DIR / ".journal"
    killed_at(monkeypatch, out, old, journal, "run.json")
    assert [p.name for p in (out / S.EVAL_DIR).iterdir()] == [".journal"] and len(temps(journal)) == 1
    result = run_cli(*old)
    assert result.exit_code == 0, result.output
    assert cache_bytes(out) == first


def test_temp_names_of_temp_names_are_ours_only_for_our_files():
    assert output.cache_writes_temp(*parse_temp_name(DOUBLE))
    for name in ("..notes.tmp-1-2.tmp-1-2", "..shard-00001.arrow.old-1.tmp-1-2", "..shard-1.arrow.tmp-1-2.tmp-1-2", ".notes.tmp-1-2"):
        assert not output.cache_writes_temp(*parse_temp_name(name)), name


@pytest.mark.parametrize(
    ("name", "text"),
    [(".lock", "my important lock info\n"), (".verified.json", '{"my": "notes"}\n'), (".tokenizer-checked.json", "{}\n")],
)
def test_bookkeeping_names_in_a_folder_no_cache_proves_ours_are_foreign(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=f"holds {name}, which this cache did not write"):
        output.refuse_foreign(tmp_path, with_eval=True, temps_pending=True)


def test_a_users_lock_file_is_refused_and_kept(made, tmp_path):
    """Found by the hunter: `.lock` holding "my important lock info" was overwritten with PID@HOST."""
    _, old, _, _, _ = made
    out = tmp_path / "user"
    out.mkdir()
    (out / ".lock").write_text("my important lock info\n")
    message = one_line_error(run_cli(*[str(out) if a == old[old.index("--out") + 1] else a for a in old]))
    assert ".lock" in message and "did not write" in message, message
    assert everything(out) == {".lock": b"my important lock info\n"}


@pytest.mark.parametrize("text", ["4711@node07\n", "4711\n", ""])
def test_a_lock_file_of_ours_alone_is_ours(tmp_path, text):
    """A kill right after the lock was taken leaves `.lock` alone (`PID@HOST`, the pid alone
    from an older kto, or nothing yet): the rerun goes on."""
    (tmp_path / ".lock").write_text(text)
    assert output.refuse_foreign(tmp_path, with_eval=True, temps_pending=True) == [tmp_path / ".lock"]


def test_verify_after_a_kill_in_the_swap_says_to_finish_it_with_overwrite(made, monkeypatch):
    out, _, new, _, second = made
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(out.parent / "old", out)
    moved = []
    real = output._move

    def move(src, dst):
        if len(moved) == 2:
            raise Killed
        moved.append(src)
        real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(output, "_move", move)
        assert isinstance(run_cli(*new).exception, Killed)
    (out / ".lock").write_text("4711@node07\n")  # the killed run's pid, as its lock file records it
    assert not (out / S.MANIFEST_NAME).exists() and not (out / ".journal").exists()
    with pytest.raises(InputError) as said:
        verify(out)
    assert "pid 4711" in str(said.value) and "with --overwrite" in str(said.value), said.value
    result = run_cli(*new)
    assert result.exit_code == 0, result.output
    assert cache_bytes(out) == second
