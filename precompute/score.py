"""Score a split's pending shards with the reference model and write them (one shard at a time,
journal first, then the atomic rename), and the manifest's scoring counts, planned per shard so
they do not depend on which shards a resumed run scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from kto.formats import schema as S
from kto.formats.cache import ArrowFile
from kto.formats.compute.numerics import Numerics
from kto.formats.compute.scoring import plan_scoring, score_sequences
from kto.formats.errors import log
from kto.formats.manifest import Counts
from kto.formats.shards import Journal, shard_table, shard_tags

from .config import PrecomputeConfig
from .plan import Split, shard_values
from .progress import Progress


@dataclass(frozen=True)
class ScoredShard:
    """What scoring one shard did, for tools that time it (`run_precompute(on_scored=...)`)."""

    scorer: object
    """The CompletionLogps used (its `.lm` for FLOP counts)."""
    lengths: list[int]
    """prompt + completion length of every sequence scored (main and KL)."""
    keys: list
    completion_tokens: int
    seconds: float
    """Wall time of the scoring, the CUDA queue drained at both ends."""


def shard_slices(n_rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows_per_shard, n_rows)) for a in range(0, n_rows, rows_per_shard)]


def pending_shards(s: Split, fingerprint: str, layout: dict, rows_per_shard: int, state) -> list[int]:
    """This process's shards (index ≡ rank mod world) that are not already finished on disk.

    Finished means: byte for byte what this configuration recorded in the journal when it wrote
    the shard. A shard that changed since (a flipped byte, a copy from elsewhere) is scored
    again; trusting its footer tags and re-hashing it would launder it into the manifest.
    """
    mine = range(state.process_index, len(shard_slices(len(s.rows), rows_per_shard)), state.num_processes)
    journal, todo = Journal(s.out), []
    for k in mine:
        name = S.shard_name(k)
        if journal.is_done(name, fingerprint, layout):
            continue
        if (s.out / name).exists():
            log(f"{s.out / name}: not the shard this configuration recorded when it wrote it (sha256 differs, or no record); rebuilding it")
        todo.append(k)
    return todo


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _shard_sequences(values: dict) -> tuple[list, list, list]:
    """A shard's work: two sequences per row (main, KL), keyed (id, 0) and (id, 1).

    Main and KL sequences share the batches, and with prefix sharing every sequence of the
    shard with the same prompt ids (a row's own two, the pairs of a paired dataset, a repeated
    system prompt) is scored after one pass over that prompt. Grouping stays inside the shard,
    so each shard remains a pure function of its rows and the configuration.
    """
    prompts = values[S.PROMPT_IDS].to_list() * 2
    completions = values[S.COMPLETION_IDS].to_list() + values[S.KL_COMPLETION_IDS].to_list()
    keys = [(i, 0) for i in values[S.ID]] + [(i, 1) for i in values[S.ID]]
    return prompts, completions, keys


def score_values(scored, n: int, store_token_logps: bool) -> dict:
    """The SCORE columns of a shard's n rows from its 2n scored sequences (main, then KL)."""
    return {
        S.REF_LOGP: scored.sums[:n],
        S.REF_TOKEN_LOGPS: scored.token_logps[:n] if store_token_logps else None,
        S.REF_KL_LOGP: scored.sums[n:],
        S.REF_KL_TOKEN_LOGPS: scored.token_logps[n:] if store_token_logps else None,
    }


def with_scoring_counts(s: Split, cfg: PrecomputeConfig, staged: Path) -> Counts:
    """Tokens represented, scored and saved: planned per shard, the same whichever shards this
    run scored (a resumed run skips some), so the manifest stays byte-identical."""
    represented = scored = 0
    for a, b in shard_slices(len(s.rows), cfg.rows_per_shard):
        with ArrowFile(staged) as reader:
            values = shard_values(reader, s.rows[a:b], s.partners[a:b], s.truncation)
        plan = plan_scoring(*_shard_sequences(values), share_prefixes=cfg.prefix_sharing)
        represented, scored = represented + plan.represented_tokens, scored + plan.computed_tokens
    return replace(s.counts, represented_tokens=represented, scored_tokens=scored, prefix_tokens_saved=represented - scored)


def score_and_write(s: Split, shard_ids, scorer, tokenizer, cfg, fingerprint, layout, state, numerics: Numerics, staged: Path, on_scored=None) -> None:
    if not shard_ids:
        return
    s.out.mkdir(parents=True, exist_ok=True)
    slices = shard_slices(len(s.rows), cfg.rows_per_shard)
    total_rows = sum(slices[k][1] - slices[k][0] for k in shard_ids)
    progress = Progress(total_rows, f"{s.name} rows", enabled=state.is_main_process)
    for k in shard_ids:
        a, b = slices[k]
        with ArrowFile(staged) as reader:  # mapped for one shard at a time: see tokenize.py, the staging file
            values = shard_values(reader, s.rows[a:b], s.partners[a:b], s.truncation)
        prompts, completions, keys = _shard_sequences(values)
        device = state.device if cfg.device_map is None else scorer.lm.device
        _sync(device)
        started = time.perf_counter()
        with numerics.context(device.type):
            scored = score_sequences(
                scorer,
                prompts,
                completions,
                keys,
                batch_tokens=cfg.batch_tokens,
                pad_id=tokenizer.pad_token_id,
                device=device,
                on_batch=lambda n, tokens: progress.update(n / 2, tokens),
                share_prefixes=cfg.prefix_sharing,
            )
        if on_scored is not None:
            _sync(device)
            on_scored(
                ScoredShard(
                    scorer, [len(p) + len(c) for p, c in zip(prompts, completions)], keys, sum(len(c) for c in completions), time.perf_counter() - started
                )
            )
        table = shard_table({**values, **score_values(scored, len(values[S.ID]), cfg.store_token_logps)})
        Journal(s.out).write_shard(S.shard_name(k), table, shard_tags(fingerprint, layout), fingerprint, layout)
    progress.close()
