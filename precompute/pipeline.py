"""kto-precompute, end to end: read → tokenize → split → pair → score → write.

Each arrow is a function testable alone. Processes (accelerate) only matter at the edges: every
process reads the whole dataset, tokenizes every N-th example and gathers the rest, pairs
identically (deterministic under the seed), then scores only the shards whose index ≡ its rank
(mod world size). Shard contents
are therefore a pure function of the data and the content configuration, whatever the number
of processes, and the main process writes one manifest over all of them once everyone is done.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import random
import time
from dataclasses import dataclass, replace
from typing import Callable
from pathlib import Path

import numpy as np
import torch

from kto.formats import schema as S
from kto.formats.atomic import atomic_dir
from kto.formats.errors import InputError, log
from kto.formats.examples import read_inputs
from kto.formats.lock import locked_dir
from kto.formats.manifest import Counts, Manifest, ShardEntry, fingerprint_of
from kto.formats.memory import peak_memory_gb
from kto.formats.numerics import Numerics, parse_numerics
from kto.formats.models import load_completion_logps, load_tokenizer, model_identity, resolve_source, tokenizer_identity
from kto.formats.scoring import score_sequences
from kto.formats.shards import sha256_file

from .config import PrecomputeConfig
from .journal import Journal
from .output import prepare_out_dir, shard_layout, shard_table, shard_tags
from .pairing import kl_partners
from .progress import Progress
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
    inputs: list[dict]
    """Each input file's name and the sha256 of the bytes its rows were parsed from."""


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
    dropped = [ex.id for ex, row in zip(examples, tokenized) if row is None]
    if dropped and rank == 0:
        more = f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""
        log(f"dropped {len(dropped)} rows left with an empty prompt or completion by tokenization or truncation: "
            f"{', '.join(map(repr, dropped[:10]))}{more}")
    return rows, len(dropped)


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


def content_of(cfg: PrecomputeConfig, source, tokenizer, numerics: Numerics, split: str, inputs: list[dict]) -> dict:
    """Everything that decides the numbers. Paths are left out on purpose (see manifest.py)."""
    return {
        "format_version": S.FORMAT_VERSION,
        "split": split,
        "model": model_identity(source),
        "tokenizer": tokenizer_identity(tokenizer),
        # File names too: rows without an `id` column are named `file:row`. The sha256 is of the
        # bytes that were parsed, taken in the same read (records.read_file), never re-read.
        "inputs": inputs,
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
    examples, inputs = read_inputs(cfg.data, cfg.columns)
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
        splits.append(Split(name, out, paired, counts, inputs))
    if prefix_splits:
        log(f"note: {prefix_splits} conversational rows were split at the common prefix of the prompt and full renderings (chat template renders the prompt differently)")
    return splits


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


def run_precompute(cfg: PrecomputeConfig, on_scored: Callable[[ScoredShard], None] | None = None) -> list[Manifest]:
    from accelerate import PartialState

    # accelerate only starts a gloo process group for several CPU processes when told cpu=True.
    state = PartialState(cpu=not torch.cuda.is_available())
    with contextlib.ExitStack() as held:  # the --out lock, released however the run ends
        return _run(cfg, state, held, on_scored)


def _run(cfg: PrecomputeConfig, state, held: contextlib.ExitStack, on_scored=None) -> list[Manifest]:
    started = time.perf_counter()
    source = resolve_source(cfg.model)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    splits = build_splits(cfg, tokenizer, state)
    numerics = parse_numerics(cfg.dtype, state.device)
    layout = shard_layout(cfg.rows_per_shard, cfg.batch_tokens)
    contents = {s.name: content_of(cfg, source, tokenizer, numerics, s.name, s.inputs) for s in splits}
    fingerprints = {name: fingerprint_of(content) for name, content in contents.items()}
    _claim_out(cfg, splits, contents, layout, state, held)
    for s in splits:
        if s.counts.desirable == 0 or s.counts.undesirable == 0:
            log(f"warning: the {s.name} split is all {'desirable' if s.counts.undesirable == 0 else 'undesirable'} ({s.counts.rows} rows); KTO learns from both classes")
    todo = {s.name: _pending_shards(s, fingerprints[s.name], layout, cfg.rows_per_shard, state) for s in splits}
    scorer = None
    if any(todo.values()):
        scorer = load_completion_logps(source, dtype=numerics.weights, device=state.device, device_map=cfg.device_map,
                                       attn_implementation=cfg.attn_implementation,
                                       trust_remote_code=cfg.trust_remote_code, chunk_size=cfg.chunk_size)
        _check_vocabulary(splits, scorer.lm, tokenizer, cfg.model)
    manifests = []
    for s in splits:
        _score_and_write(s, todo[s.name], scorer, tokenizer, cfg, fingerprints[s.name], layout, state, numerics, on_scored)
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


def _claim_out(cfg, splits, contents: dict, layout: dict, state, held: contextlib.ExitStack) -> None:
    """Main process: lock --out, then resume, clear or refuse each split's folder; the others wait.

    The lock is taken before any process writes (the others only start after the broadcast),
    and a refusal reaches every process, so none is left waiting in a collective.
    """
    error = None
    if state.is_main_process:
        try:
            held.enter_context(locked_dir(cfg.out, "--out"))
            for s in splits:
                prepare_out_dir(s.out, contents[s.name], layout, cfg.overwrite)
        except InputError as exc:
            error = str(exc)
    if state.num_processes > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise InputError(error)


def _check_vocabulary(splits: list[Split], lm, tokenizer, model: str) -> None:
    """Refuse token ids the model has no embedding row for (a tokenizer larger than the model)."""
    rows = lm.get_input_embeddings().weight.shape[0]
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id >= rows:
        raise InputError(f"--model {model}: the tokenizer's pad token id {tokenizer.pad_token_id} is not below the model's vocabulary size {rows}")
    for s in splits:
        for r in s.rows:
            for ids in (r.prompt_ids, r.completion_ids):
                if len(ids) and int(ids.max()) >= rows:
                    raise InputError(f"row {r.id!r}: token id {int(ids[ids >= rows][0])} is not below the vocabulary size {rows} of --model {model}; "
                                     "its tokenizer has more tokens than the model has embeddings")


def _shard_slices(n_rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows_per_shard, n_rows)) for a in range(0, n_rows, rows_per_shard)]


def _pending_shards(s: Split, fingerprint: str, layout: dict, rows_per_shard: int, state) -> list[int]:
    """This process's shards (index ≡ rank mod world) that are not already finished on disk.

    Finished means: byte for byte what this configuration recorded in the journal when it wrote
    the shard. A shard that changed since (a flipped byte, a copy from elsewhere) is scored
    again; trusting its footer tags and re-hashing it would launder it into the manifest.
    """
    mine = range(state.process_index, len(_shard_slices(len(s.rows), rows_per_shard)), state.num_processes)
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


def _score_and_write(s: Split, shard_ids, scorer, tokenizer, cfg, fingerprint, layout, state, numerics: Numerics,
                     on_scored=None) -> None:
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
        _sync(device)
        started = time.perf_counter()
        with numerics.context(device.type):
            scored = score_sequences(
                scorer, prompts, completions, keys, batch_tokens=cfg.batch_tokens, pad_id=tokenizer.pad_token_id,
                device=device, on_batch=lambda n, tokens: progress.update(n / 2, tokens),
            )
        if on_scored is not None:
            _sync(device)
            on_scored(ScoredShard(scorer, [len(p) + len(c) for p, c in zip(prompts, completions)], keys,
                                  sum(len(c) for c in completions), time.perf_counter() - started))
        n = len(rows)
        ref = type(scored)(scored.token_logps[:n], scored.sums[:n])
        ref_kl = type(scored)(scored.token_logps[n:], scored.sums[n:])
        table = shard_table(rows, ref, ref_kl, cfg.store_token_logps)
        Journal(s.out).write_shard(S.shard_name(k), table, shard_tags(fingerprint, layout), fingerprint, layout)
    progress.close()


def _finish(s: Split, manifest: Manifest, tokenizer, rows_per_shard: int) -> Manifest:
    """Main process: check every shard against the journal, copy the tokenizer, write the manifest last.

    The manifest's sha256s are the ones recorded when the shards were written; a shard whose
    bytes no longer match them stops the run instead of being hashed into the manifest.
    """
    journal, fingerprint = Journal(s.out), fingerprint_of(manifest.content)
    layout = {k: manifest.layout[k] for k in shard_layout(1, 1)}
    entries = []
    for k, (a, b) in enumerate(_shard_slices(len(s.rows), rows_per_shard)):
        path = s.out / S.shard_name(k)
        recorded = journal.recorded_sha(path.name, fingerprint, layout)
        if not path.is_file() or recorded is None:
            raise RuntimeError(f"{path}: missing, or not in the journal, after every process finished")
        if (actual := sha256_file(path)) != recorded:
            raise InputError(f"{path}: sha256 {actual[:16]}… is not the {recorded[:16]}… recorded when it was written; "
                             "it changed during the run: run the same command again to rebuild it")
        entries.append(ShardEntry(path.name, b - a, recorded))
    tok_dir = s.out / S.TOKENIZER_DIR
    if not journal.owns_tokenizer(tok_dir):  # prepare_out_dir refused a tokenizer/ not ours
        with atomic_dir(tok_dir) as tmp:
            tokenizer.save_pretrained(tmp)
            journal.record_tokenizer(tmp)  # before the rename: what appears was recorded first
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
