"""kto-precompute, end to end: read → tokenize → split → pair → score → write.

Each arrow is a function testable alone. Processes (accelerate) only matter at the edges: every
process reads the whole dataset, tokenizes every N-th example and gathers the rest, pairs
identically (deterministic under the seed), then scores only the shards whose index ≡ its rank
(mod world size). Shard contents
are therefore a pure function of the data and the content configuration, whatever the number
of processes, and the main process writes one manifest over all of them once everyone is done.
"""

from __future__ import annotations

import importlib.metadata
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kto.formats import schema as S
from kto.formats.atomic import atomic_dir
from kto.formats.errors import InputError
from kto.formats.examples import file_sha256, read_examples
from kto.formats.logprob import CompletionLogps
from kto.formats.manifest import Counts, Manifest, ShardEntry, fingerprint_of
from kto.formats.numerics import Numerics, parse_numerics
from kto.formats.models import load_causal_lm, load_tokenizer, model_identity, resolve_source, tokenizer_identity
from kto.formats.scoring import score_sequences
from kto.formats.shards import sha256_file, shard_metadata, write_shard

from .config import PrecomputeConfig
from .output import prepare_out_dir, shard_layout, shard_table, shard_tags
from .pairing import kl_partners
from .progress import Progress, peak_memory_gb
from .tokenize import TRUNCATION_RULE, TokenizedRow, leading_bos_id, tokenize_example

@dataclass(frozen=True)
class CacheRow:
    """One shard row before scoring: ids of the main and the KL sequence."""

    id: str
    label: bool
    prompt_ids: np.ndarray  # int32, as TokenizedRow's
    completion_ids: np.ndarray
    kl_source_id: str
    kl_completion_ids: np.ndarray
    truncated: bool


@dataclass(frozen=True)
class Split:
    name: str  # "train" or "eval"
    out: Path
    rows: list[CacheRow]
    counts: Counts


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tokenize_all(examples, tokenizer, cfg: PrecomputeConfig, state=None) -> tuple[list[TokenizedRow], int]:
    """Tokenize every example; None rows (empty completion) are dropped and counted.

    With several processes each tokenizes every N-th example and the results are gathered, so
    tokenization takes 1/N of the time; every process ends with the same full, ordered list.
    """
    bos_id = leading_bos_id(tokenizer)
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    mine = [tokenize_example(ex, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, bos_id=bos_id)
            for ex in examples[rank::world]]
    if world > 1:
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, mine)
        tokenized = [None] * len(examples)
        for r, part in enumerate(parts):
            tokenized[r::world] = part
    else:
        tokenized = mine
    rows = [row for row in tokenized if row is not None]
    return rows, len(tokenized) - len(rows)


def split_eval(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out round(fraction · n) rows, chosen by a seeded shuffle; both keep input order."""
    if fraction == 0:
        return rows, []
    n_eval = round(fraction * len(rows))
    picked = set(random.Random(f"eval-{seed}").sample(range(len(rows)), n_eval))
    train = [r for i, r in enumerate(rows) if i not in picked]
    evals = [r for i, r in enumerate(rows) if i in picked]
    for name, part in (("train", train), ("eval", evals)):
        if len(part) < 2:
            raise InputError(f"--eval-fraction {fraction}: leaves {len(part)} {name} rows of {len(rows)}; each split needs at least 2")
    return train, evals


def pair_rows(rows: list[TokenizedRow], seed: int, max_length: int) -> tuple[list[CacheRow], int]:
    """Attach each row's KL completion: its partner's stored completion, cut to fit max_length."""
    pairing = kl_partners(
        [_text_key(r.example.prompt) for r in rows],
        [_text_key(r.example.completion) for r in rows],
        [r.example.id for r in rows],
        seed,
    )
    out = []
    for row, j in zip(rows, pairing.partner):
        partner = rows[j]
        room = max_length - len(row.prompt_ids)
        out.append(
            CacheRow(
                id=row.example.id, label=row.example.label,
                prompt_ids=row.prompt_ids, completion_ids=row.completion_ids,
                kl_source_id=partner.example.id, kl_completion_ids=partner.completion_ids[:room],
                truncated=row.truncated,
            )
        )
    return out, pairing.same_prompt


def _text_key(value) -> str:
    return value if isinstance(value, str) else repr(value)


def count(rows: list[CacheRow], *, dropped: int, same_prompt: int, prefix_splits: int) -> Counts:
    return Counts(
        rows=len(rows),
        desirable=sum(r.label for r in rows),
        undesirable=sum(not r.label for r in rows),
        dropped=dropped,
        truncated=sum(r.truncated for r in rows),
        prompt_tokens=sum(len(r.prompt_ids) for r in rows),
        completion_tokens=sum(len(r.completion_ids) for r in rows),
        kl_completion_tokens=sum(len(r.kl_completion_ids) for r in rows),
        same_prompt_kl_pairs=same_prompt,
        template_prefix_splits=prefix_splits,
    )


def content_of(cfg: PrecomputeConfig, source, tokenizer, numerics: Numerics, split: str) -> dict:
    """Everything that decides the numbers. Paths are left out on purpose (see manifest.py)."""
    return {
        "format_version": S.FORMAT_VERSION,
        "split": split,
        "model": model_identity(source),
        "tokenizer": tokenizer_identity(tokenizer),
        # File names too: rows without an `id` column are named `file:row`.
        "inputs": [{"name": Path(p).name, "sha256": file_sha256(p)} for p in cfg.data],
        "columns": cfg.columns.as_dict(),
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "truncation": TRUNCATION_RULE,
        "seed": cfg.seed,
        "eval_fraction": cfg.eval_fraction,
        "dtype": numerics.name,
        "attn_implementation": cfg.attn_implementation,
        "store_token_logps": cfg.store_token_logps,
    }


def build_splits(cfg: PrecomputeConfig, tokenizer, state=None) -> list[Split]:
    examples = read_examples(cfg.data, cfg.columns)
    rows, dropped = tokenize_all(examples, tokenizer, cfg, state)
    if len(rows) < 2:
        raise InputError(f"--data {', '.join(map(str, cfg.data))}: {len(rows)} rows left after dropping {dropped} with an empty prompt or completion; need at least 2")
    prefix_splits = sum(r.prefix_split for r in rows)
    train, evals = split_eval(rows, cfg.eval_fraction, cfg.seed)
    splits = []
    for name, part, out in (("train", train, cfg.out), ("eval", evals, cfg.out / S.EVAL_DIR)):
        if not part:
            continue
        paired, same_prompt = pair_rows(part, cfg.seed, cfg.max_length)
        counts = count(paired, dropped=dropped if name == "train" else 0, same_prompt=same_prompt,
                       prefix_splits=sum(r.prefix_split for r in part))
        splits.append(Split(name, out, paired, counts))
    if prefix_splits:
        log(f"note: {prefix_splits} conversational rows were split at the common prefix of the prompt and full renderings (chat template renders the prompt differently)")
    return splits


def run_precompute(cfg: PrecomputeConfig) -> list[Manifest]:
    from accelerate import PartialState

    # accelerate only starts a gloo process group for several CPU processes when told cpu=True.
    state = PartialState(cpu=not torch.cuda.is_available())
    started = time.perf_counter()
    source = resolve_source(cfg.model)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    splits = build_splits(cfg, tokenizer, state)
    numerics = parse_numerics(cfg.dtype, state.device)
    layout = shard_layout(cfg.rows_per_shard, cfg.batch_tokens)
    contents = {s.name: content_of(cfg, source, tokenizer, numerics, s.name) for s in splits}
    fingerprints = {name: fingerprint_of(content) for name, content in contents.items()}
    for s in splits:
        if state.is_main_process:
            prepare_out_dir(s.out, fingerprints[s.name], layout, cfg.overwrite)
        state.wait_for_everyone()
    for s in splits:
        if s.counts.desirable == 0 or s.counts.undesirable == 0:
            log(f"warning: the {s.name} split is all {'desirable' if s.counts.undesirable == 0 else 'undesirable'} ({s.counts.rows} rows); KTO learns from both classes")
    todo = {s.name: _pending_shards(s, fingerprints[s.name], layout, cfg.rows_per_shard, state) for s in splits}
    scorer = None
    if any(todo.values()):
        lm = load_causal_lm(source, dtype=numerics.weights, attn_implementation=cfg.attn_implementation,
                            trust_remote_code=cfg.trust_remote_code, device_map=cfg.device_map)
        if cfg.device_map is None:
            lm = lm.to(state.device)
        scorer = CompletionLogps(lm.eval(), chunk_size=cfg.chunk_size)
    manifests = []
    for s in splits:
        _score_and_write(s, todo[s.name], scorer, tokenizer, cfg, fingerprints[s.name], layout, state, numerics)
        state.wait_for_everyone()
        manifest = Manifest(
            content=contents[s.name],
            layout={**layout, "num_processes": state.num_processes},
            counts=s.counts,
            shards=[],
            info=_info(cfg, state),
        )
        if state.is_main_process:
            manifest = _finish(s, manifest, tokenizer, cfg.rows_per_shard)
        manifests.append(manifest)
        state.wait_for_everyone()
    if state.is_main_process:
        _summary(manifests, time.perf_counter() - started)
    return manifests


def _shard_slices(n_rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows_per_shard, n_rows)) for a in range(0, n_rows, rows_per_shard)]


def _pending_shards(s: Split, fingerprint: str, layout: dict, rows_per_shard: int, state) -> list[int]:
    """This process's shards (index ≡ rank mod world) that are not already finished on disk."""
    mine = range(state.process_index, len(_shard_slices(len(s.rows), rows_per_shard)), state.num_processes)
    tags = shard_tags(fingerprint, layout)
    return [k for k in mine if not ((s.out / S.shard_name(k)).is_file() and shard_metadata(s.out / S.shard_name(k)) == tags)]


def _score_and_write(s: Split, shard_ids, scorer, tokenizer, cfg, fingerprint, layout, state, numerics: Numerics) -> None:
    if not shard_ids:
        return
    s.out.mkdir(parents=True, exist_ok=True)
    slices = _shard_slices(len(s.rows), cfg.rows_per_shard)
    total_rows = sum(slices[k][1] - slices[k][0] for k in shard_ids)
    progress = Progress(total_rows, f"{s.name} rows", enabled=state.is_main_process)
    for k in shard_ids:
        rows = s.rows[slices[k][0]:slices[k][1]]
        # Main and KL sequences share the batches: two sequences per row, one length sort.
        prompts = [r.prompt_ids for r in rows] * 2
        completions = [r.completion_ids for r in rows] + [r.kl_completion_ids for r in rows]
        keys = [(r.id, 0) for r in rows] + [(r.id, 1) for r in rows]
        device = state.device if cfg.device_map is None else scorer.lm.device
        with numerics.context(device.type):
            scored = score_sequences(
                scorer, prompts, completions, keys, batch_tokens=cfg.batch_tokens, pad_id=tokenizer.pad_token_id,
                device=device, on_batch=lambda n, tokens: progress.update(n / 2, tokens),
            )
        n = len(rows)
        ref = type(scored)(scored.token_logps[:n], scored.sums[:n])
        ref_kl = type(scored)(scored.token_logps[n:], scored.sums[n:])
        write_shard(s.out / S.shard_name(k), shard_table(rows, ref, ref_kl, cfg.store_token_logps), shard_tags(fingerprint, layout))
    progress.close()


def _finish(s: Split, manifest: Manifest, tokenizer, rows_per_shard: int) -> Manifest:
    """Main process: check every shard is there, copy the tokenizer, write the manifest last."""
    entries = []
    for k, (a, b) in enumerate(_shard_slices(len(s.rows), rows_per_shard)):
        path = s.out / S.shard_name(k)
        if not path.is_file():
            raise RuntimeError(f"{path}: missing after every process finished")
        entries.append(ShardEntry(path.name, b - a, sha256_file(path)))
    tok_dir = s.out / S.TOKENIZER_DIR
    if not tok_dir.is_dir():
        with atomic_dir(tok_dir) as tmp:
            tokenizer.save_pretrained(tmp)
    manifest = replace(manifest, shards=entries)
    manifest.write(s.out)
    return manifest


def _info(cfg: PrecomputeConfig, state) -> dict:
    import transformers

    try:
        version = importlib.metadata.version("kto-offline")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "model_path": str(cfg.model),
        "data_paths": [str(p) for p in cfg.data],
        "kto_version": version,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(state.device.type),
    }


def _summary(manifests: list[Manifest], seconds: float) -> None:
    for m in manifests:
        c = m.counts
        tokens = c.prompt_tokens * 2 + c.completion_tokens + c.kl_completion_tokens
        log(
            f"{m.content['split']}: {c.rows} rows ({c.desirable} desirable, {c.undesirable} undesirable), "
            f"{c.dropped} dropped, {c.truncated} truncated, {c.same_prompt_kl_pairs} same-prompt KL pairs, "
            f"{tokens} tokens scored, {len(m.shards)} shards"
        )
    log(f"done in {seconds:.1f} s, peak memory {peak_memory_gb():.2f} GB")
