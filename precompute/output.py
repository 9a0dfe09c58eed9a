"""The output directory: is it ours, can we resume into it, and what goes into each shard.

Resume rule: a shard file whose metadata carries this run's content fingerprint and layout is
finished work and is skipped. Anything else in a non-empty `--out` is refused unless
`--overwrite`, so a cache can never mix rows from two configurations.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.shards import VERIFIED_NAME, shard_metadata

OURS = {S.MANIFEST_NAME, S.TOKENIZER_DIR, S.EVAL_DIR, VERIFIED_NAME}


def _is_ours(path: Path) -> bool:
    name = path.name
    return name in OURS or path.match(S.SHARD_GLOB) or (name.startswith(".") and ".tmp-" in name)


def shard_layout(rows_per_shard: int, batch_tokens: int) -> dict:
    """The part of the layout that decides shard bytes: which rows go where, and the batching.

    The process count is recorded in the manifest but is not part of it: shard contents do not
    depend on it, so a crashed 8-process run may be resumed with 4.
    """
    return {"rows_per_shard": rows_per_shard, "batch_tokens": batch_tokens}


def shard_tags(fingerprint: str, layout: dict) -> dict[str, str]:
    return {"kto.fingerprint": fingerprint, "kto.layout": json.dumps(layout, sort_keys=True)}


def prepare_out_dir(out: Path, fingerprint: str, layout: dict, overwrite: bool) -> None:
    """Refuse a non-empty `out` made by something else, or clear it with `overwrite`."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file, not a directory")
    if not out.exists():
        return
    entries = list(out.iterdir())
    foreign = [p.name for p in entries if not _is_ours(p)]
    stale = [p.name for p in out.glob(S.SHARD_GLOB) if shard_metadata(p) != shard_tags(fingerprint, layout)]
    manifest = out / S.MANIFEST_NAME
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("fingerprint") != fingerprint or shard_layout(**{k: old["layout"][k] for k in layout}) != layout:
            stale.append(S.MANIFEST_NAME)
    if not (foreign or stale):
        return
    if not overwrite:
        what = foreign or stale
        reason = "files that are not a kto cache" if foreign else "a cache made with a different configuration"
        raise InputError(
            f"--out {out}: holds {reason} ({', '.join(sorted(what)[:3])}{', …' if len(what) > 3 else ''}); "
            "pass --overwrite to replace it or choose another directory"
        )
    # --overwrite removes only what a kto cache holds (eval/ included: it is rebuilt if asked
    # for); other files are left for their owner, and the next run without --overwrite refuses.
    for p in entries:
        if _is_ours(p):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _int_lists(arrays: Sequence[np.ndarray]) -> pa.Array:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int32) if len(arrays) else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _float_lists(arrays: Sequence[np.ndarray] | None, n: int) -> pa.Array:
    if arrays is None:
        return pa.nulls(n, type=pa.list_(pa.float32()))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def shard_table(rows, ref, ref_kl, store_token_logps: bool) -> pa.Table:
    """rows: CacheRow list; ref/ref_kl: Scored results aligned with rows."""
    n = len(rows)
    return pa.table(
        {
            S.ID: pa.array([r.id for r in rows], pa.string()),
            S.LABEL: pa.array([r.label for r in rows], pa.bool_()),
            S.PROMPT_IDS: _int_lists([r.prompt_ids for r in rows]),
            S.COMPLETION_IDS: _int_lists([r.completion_ids for r in rows]),
            S.REF_LOGP: pa.array(ref.sums, pa.float64()),
            S.REF_TOKEN_LOGPS: _float_lists(ref.token_logps if store_token_logps else None, n),
            S.KL_SOURCE_ID: pa.array([r.kl_source_id for r in rows], pa.string()),
            S.KL_COMPLETION_IDS: _int_lists([r.kl_completion_ids for r in rows]),
            S.REF_KL_LOGP: pa.array(ref_kl.sums, pa.float64()),
            S.REF_KL_TOKEN_LOGPS: _float_lists(ref_kl.token_logps if store_token_logps else None, n),
            S.TRUNCATED: pa.array([r.truncated for r in rows], pa.bool_()),
        },
        schema=S.SHARD_SCHEMA,
    )
