"""`kto-precompute --overwrite` removes the old cache's entries with its manifest first
(precompute/output.py `_remove`, from swap_in): stopped between two of those removals, --out
must never hold a manifest that lists shards no longer there. Without a manifest a reader is
told the cache is unfinished (formats/cache.py open_cache), and the same command finishes the
swap."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from conftest import chat_rows, precompute_args, write_rows
from conftest import run_precompute as run_cli

from kto.formats import schema as S
from kto.formats.cache import open_cache
from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest
from kto.inspection.verify import verify
from kto.precompute.output import NEXT


def test_a_failed_shard_removal_leaves_no_manifest_of_the_old_cache(tmp_path, tiny_model_dir, monkeypatch):
    rows = chat_rows()
    data = write_rows(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    old_shards = sorted(p.name for p in out.glob(S.SHARD_GLOB))
    assert len(old_shards) >= 2, old_shards
    new = [*precompute_args(data, tiny_model_dir, out, "--max-length", "48"), "--overwrite"]

    real_unlink, unlinked = Path.unlink, []

    def unlink(self, *args, **kwargs):
        if self.parent == out and self.match(S.SHARD_GLOB):  # swap_in removing the old cache's shards
            if unlinked:  # the second one fails: one shard of the old cache is gone already
                raise OSError(errno.EIO, "Input/output error", str(self))
            unlinked.append(self.name)
        return real_unlink(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", unlink)
        failed = run_cli(*new)
    assert failed.exit_code != 0 and unlinked, failed.output
    assert (out / NEXT).is_dir() and not (out / unlinked[0]).exists()
    assert not (out / S.MANIFEST_NAME).exists(), read_manifest(out).shards  # listed shards that are gone
    with pytest.raises(InputError, match="no manifest"):
        open_cache(out, stamps=False, hold=False)

    finished = run_cli(*new)
    assert finished.exit_code == 0, finished.output
    assert not (out / NEXT).exists() and all(r.ok for r in verify(out, check_tokenizer=False))
    manifest = read_manifest(out)
    assert manifest.content.max_length == 48 and manifest.counts.rows == len(rows)
    assert sorted(p.name for p in out.glob(S.SHARD_GLOB)) == sorted(s.name for s in manifest.shards)
