"""--eval-cache: the held-out rows kto-train evaluates on, checked before --out is touched.

They must be no training rows (by fingerprint, shared shard, the same input and id, or the same
token ids and label), and come from the same reference model, tokenizer, numerics and chat
template as --cache, or the eval rewards would measure the training rows or another reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from kto.formats import schema as S
from kto.formats.cache import ShardedCache, open_cache
from kto.formats.errors import InputError, log
from kto.formats.manifest import same_model

if TYPE_CHECKING:
    import pyarrow as pa
    from accelerate import Accelerator

    from kto.formats.manifest import Manifest

    from .config import TrainConfig


def check_held_out(eval_manifest: Manifest, train_manifest: Manifest, cfg: TrainConfig) -> None:
    """Refuse an eval cache that holds training rows. The same fingerprint means the same inputs,
    split, seed and scoring, i.e. the same rows; a shard with the same sha256 holds the same rows
    (the shard carries its cache's fingerprint). Both read the manifests only."""
    where = f"--eval-cache {cfg.eval_cache}"
    if eval_manifest.fingerprint == train_manifest.fingerprint:
        raise InputError(
            f"{where}: the same rows as --cache {cfg.cache} (same fingerprint {train_manifest.fingerprint[:16]}…); evaluate on a held-out split such as CACHE/eval"
        )
    train_shards = {s.sha256: s.name for s in train_manifest.shards}
    shared = [(s.name, train_shards[s.sha256]) for s in eval_manifest.shards if s.sha256 in train_shards]
    if shared:
        name, train_name = shared[0]
        raise InputError(f"{where}: its {name} is --cache {cfg.cache}'s {train_name} (same sha256): the eval rows are training rows")


def check_no_shared_rows(eval_cache: ShardedCache, train: ShardedCache, cfg: TrainConfig) -> None:
    """Refuse eval rows that are training rows of another split of the same file: the same input
    (by sha256) and the same id are the same row (another --seed or --eval-fraction of one file
    splits it otherwise). Reads the id columns only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digests = lambda c: {i.get("sha256") for i in c.manifest.content.row_inputs}
    if not digests(eval_cache) & digests(train):
        return
    ids = pa.chunked_array([eval_cache.open_shard(k).column(S.ID) for k in range(eval_cache.num_shards)]).unique()
    shared = []
    for k in range(train.num_shards):
        column = train.open_shard(k).column(S.ID)
        shared += pc.filter(column, pc.is_in(column, value_set=ids)).to_pylist()
    if shared:
        raise InputError(
            f"--eval-cache {cfg.eval_cache}: {len(shared)} of its rows are training rows of --cache {cfg.cache} (the same input file and id, "
            f"e.g. {min(shared)!r}); evaluate on the held-out split of the training cache, CACHE/eval"
        )


def check_no_shared_content(eval_cache: ShardedCache, train: ShardedCache, cfg: TrainConfig, accelerator: Accelerator | None) -> None:
    """Eval rows whose token ids and label are a training row's, whatever file or id they came
    from: an eval cache precomputed from a renamed copy of the training file, or from its rows
    written out again, scored training rows with no word. All of them shared is refused; some
    (a question both splits of a public dataset hold) is said, with how many. The eval rows'
    keys are held (a hash each); the training rows stream past them, one shard at a time."""
    held = {key for k in range(eval_cache.num_shards) for key in _row_keys(eval_cache.open_shard(k))}
    shared = set()
    for k in range(train.num_shards):
        shared.update(key for key in _row_keys(train.open_shard(k)) if key in held)
    if not shared:
        return
    said = f"--eval-cache {cfg.eval_cache}: {len(shared)} of its {len(held)} distinct rows are --cache {cfg.cache} rows (the same token ids and label)"
    if len(shared) == len(held):
        raise InputError(f"{said}; evaluation would score rows trained on: evaluate on a held-out split such as CACHE/eval")
    log(f"warning: {said}: their eval numbers are on rows trained on", accelerator)


def _row_keys(table: pa.Table) -> Iterator[int]:
    """A hash of each row's (label, prompt ids, completion ids), from the list columns' flat values."""
    labels = table.column(S.LABEL).to_pylist()
    columns = []
    for name in (S.PROMPT_IDS, S.COMPLETION_IDS):
        lists = table.column(name).combine_chunks()
        columns.append((np.asarray(lists.offsets), np.asarray(lists.values)))
    (po, pv), (co, cv) = columns
    for i, label in enumerate(labels):
        yield hash((label, pv[po[i] : po[i + 1]].tobytes(), cv[co[i] : co[i + 1]].tobytes()))


def open_eval_cache(cfg: TrainConfig, train: ShardedCache, accelerator: Accelerator | None = None) -> ShardedCache | None:
    """The eval cache must come from the same reference model, tokenizer, numerics and chat
    template as the training cache, or its rewards would be measured against another reference
    or on prompts rendered otherwise; other length limits are said."""
    if cfg.eval_cache is None:
        return None
    manifest = train.manifest
    cache = open_cache(cfg.eval_cache)
    check_held_out(cache.manifest, manifest, cfg)  # manifests only: a training shard copied in is named as such first
    cache.lengths()  # every shard present and readable before --out is touched
    check_no_shared_rows(cache, train, cfg)
    check_no_shared_content(cache, train, cfg, accelerator)
    held, trained = cache.manifest.content, manifest.content
    same = {
        "model": same_model(held.model, trained.model),
        "tokenizer": held.tokenizer == trained.tokenizer,
        # The reference's numerics and the prompts' rendering: a bf16 eval cache beside an fp32 one
        # put the reference's rounding into every eval reward (KL -1.1e-3 one step from the
        # reference), and another template scores prompts in a format training never saw.
        "dtype": held.dtype == trained.dtype,
        "chat template": (held.chat_template, held.chat_template_kwargs) == (trained.chat_template, trained.chat_template_kwargs),
    }
    for part, ok in same.items():
        if not ok:
            raise InputError(f"--eval-cache {cfg.eval_cache}: made with another {part} than --cache {cfg.cache}")
    cut = [
        f"{k} {getattr(held, k)} there, {getattr(trained, k)} in --cache"
        for k in ("max_length", "max_prompt_length")
        if getattr(held, k) != getattr(trained, k)
    ]
    if cut:  # may be meant (longer held-out rows), but its prompts are cut otherwise than training's
        log(f"note: --eval-cache {cfg.eval_cache} was made with other length limits ({'; '.join(cut)})", accelerator)
    return cache
