"""kto-precompute, end to end: read → tokenize → stage → split → pair → score → write.

Tokenized rows are spilled to a staging file in --out (staging.py) and read back one shard at a
time, so memory does not grow with the number of rows.

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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kto.formats import schema as S
from kto.formats.atomic import atomic_dir
from kto.formats.compute.models import load_completion_logps, load_tokenizer, model_identity, resolve_source, tokenizer_identity
from kto.formats.compute.numerics import Numerics, parse_numerics
from kto.formats.compute.scoring import plan_scoring, score_sequences
from kto.formats.errors import InputError, log
from kto.formats.examples import iter_examples
from kto.formats.hub import input_identity
from kto.formats.lock import locked_dir
from kto.formats.manifest import CacheContent, Counts, Manifest, ShardEntry, fingerprint_of
from kto.formats.memory import peak_memory_gb
from kto.formats.shards import sha256_file, shard_tags

from .config import PrecomputeConfig
from .journal import Journal
from .output import prepare_out_dir, shard_layout, shard_table
from .pairing import PAIRING_RULE, kl_partners
from .progress import Progress
from .staging import StagedIndex, StagingReader, check_unique_ids, read_index, stage, staging_path
from .templates import ChatTemplate, load_chat_template
from .templates import install as install_template
from .tokenize import TRUNCATION_RULE, Truncation, leading_bos_id, tokenize_example


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
    rows: np.ndarray
    """Staged row index of each cache row, in cache order (the rows live in the staging file)."""
    partners: np.ndarray
    """Staged row index of each row's KL partner."""
    counts: Counts
    truncation: Truncation
    """How this split's rows and their KL completions are cut (needs each row's partner)."""


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


class _LazyIds:
    """ids[i] read from the staging file only when pairing has to name a row in an error."""

    def __init__(self, path: Path, rows: np.ndarray):
        self.path, self.rows = path, rows

    def __getitem__(self, i: int) -> str:
        with StagingReader(self.path) as reader:
            return reader.value("id", int(self.rows[i]))


def pair_rows(index: StagedIndex, rows: np.ndarray, cfg: PrecomputeConfig, path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows in the pairing's cycle order, each row's KL partner (staged row indices), and
    how many pairs share a prompt. kto-train's steps follow the cycle (pairing.py)."""
    lengths = np.minimum(index.prompt_len[rows] + index.completion_len[rows], cfg.max_length)
    pairing = kl_partners(index.prompt_key[rows].tolist(), index.completion_key[rows].tolist(), _LazyIds(path, rows), cfg.seed, lengths=lengths.tolist())
    order = np.asarray(pairing.order, dtype=np.int64)
    return rows[order], rows[np.asarray(pairing.partner, dtype=np.int64)[order]], pairing.same_prompt


def count(index: StagedIndex, rows: np.ndarray, partners: np.ndarray, truncation: Truncation, *, dropped: int, same_prompt: int) -> Counts:
    """The split's counts, from lengths alone (`Truncation.kept_lengths`, the arithmetic that cuts)."""
    prompt_len, completion_len, kl_len = index.prompt_len[rows], index.completion_len[rows], index.completion_len[partners]
    kept_prompt, kept_completion, kept_kl = truncation.kept_lengths(prompt_len, completion_len, kl_len)
    prompt_cut, completion_cut = kept_prompt < prompt_len, kept_completion < completion_len
    return Counts(
        rows=len(rows),
        desirable=int(index.label[rows].sum()),
        undesirable=int((~index.label[rows]).sum()),
        dropped=dropped,
        truncated=int((prompt_cut | completion_cut).sum()),
        prompt_truncated=int(prompt_cut.sum()),
        completion_truncated=int(completion_cut.sum()),
        kl_completion_truncated=int((kept_kl < kl_len).sum()),
        prompt_tokens=int(kept_prompt.sum()),
        completion_tokens=int(kept_completion.sum()),
        kl_completion_tokens=int(kept_kl.sum()),
        same_prompt_kl_pairs=same_prompt,
        template_prefix_splits=int(index.prefix_split[rows].sum()),
    )


def content_of(cfg: PrecomputeConfig, source, tokenizer_id: dict, numerics: Numerics, split: str, template: ChatTemplate = ChatTemplate()) -> CacheContent:
    """Everything that decides the numbers. Paths are left out on purpose (see manifest.py).

    Options added later (chat template, ShareGPT names) enter only when set, so a cache made
    without them keeps its fingerprint."""
    content = {
        "format_version": S.FORMAT_VERSION,
        "split": split,
        "model": model_identity(source),
        "tokenizer": tokenizer_id,
        # File names too: rows without an `id` column are named `file:row`.
        "inputs": [input_identity(p) for p in cfg.data],
        "columns": cfg.columns.as_dict(),
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "truncation": TRUNCATION_RULE,
        "kl_pairing": PAIRING_RULE,
        "seed": cfg.seed,
        "eval_fraction": cfg.eval_fraction,
        "dtype": numerics.name,
        "attn_implementation": cfg.attn_implementation,
        "store_token_logps": cfg.store_token_logps,
        **template.content(),
    }
    if not cfg.sharegpt.is_default():
        content["sharegpt"] = cfg.sharegpt.as_dict()
    return CacheContent(**content)  # every key a field of formats/content.py


# Content that does not change a staged token id: a run differing only in these reuses staging.
# Rows are staged untruncated (truncation needs the KL partner), so the limits are not staged.
_NOT_STAGED = (
    "split",
    "model",
    "seed",
    "eval_fraction",
    "dtype",
    "attn_implementation",
    "store_token_logps",
    "max_length",
    "max_prompt_length",
    "truncation",
    "kl_pairing",
)


def stage_rows(cfg: PrecomputeConfig, tokenizer, template: ChatTemplate, content: CacheContent, state=None) -> Path:
    """Read and tokenize every input row into OUT/.staging-KEY.arrow (or reuse it)."""
    key = fingerprint_of({k: v for k, v in content.to_json().items() if k not in _NOT_STAGED})

    def tokenize_one(ex):
        return tokenize_example(ex, tokenizer, template)

    path = staging_path(cfg.out, key)
    if path.is_file():
        return path  # a resumed run: staged by a run of the same inputs and configuration
    parsed: list[dict] = []
    stage(iter_examples(cfg.data, cfg.columns, cfg.sharegpt, parsed), tokenize_one, path, state)
    # The fingerprint hashed each file before reading; its rows were parsed from bytes hashed
    # again in the same read (records.read_file). Equal, or the file changed in between.
    for before, read in zip(content.inputs, parsed):
        if before != read:
            if state is None or state.is_main_process:
                path.unlink(missing_ok=True)
            raise InputError(
                f"--data {read['name']}: changed while it was being read (sha256 {before.get('sha256', '?')[:16]}… "
                f"before, {read.get('sha256', '?')[:16]}… as parsed); run again"
            )
    return path


def build_splits(cfg: PrecomputeConfig, path: Path, bos_id: int | None, main: bool = True) -> list[Split]:
    """Drop, split, pair and count the staged rows; `bos_id` is re-attached to cut prompts."""
    truncation = Truncation(cfg.max_length, cfg.max_prompt_length, bos_id)
    index = read_index(path)
    check_unique_ids(index, path)
    if index.n < 2:
        files = ", ".join(str(p) for p in cfg.data) or "no input files"
        raise InputError(f"need at least 2 examples, got {index.n} (from {files})")
    kept = np.flatnonzero(index.kept)
    dropped = index.n - len(kept)
    if len(kept) < 2:
        raise InputError(
            f"--data {', '.join(map(str, cfg.data))}: {len(kept)} rows left after dropping {dropped} with an empty prompt or completion; need at least 2"
        )
    if dropped and main:
        _log_dropped(path, np.flatnonzero(~index.kept))
    train, evals = split_eval(kept.tolist(), cfg.eval_fraction, cfg.seed)
    splits = []
    for name, part, out in (("train", train, cfg.out), ("eval", evals, cfg.out / S.EVAL_DIR)):
        if not part:
            continue
        part = np.asarray(part, dtype=np.int64)
        rows, partners, same_prompt = pair_rows(index, part, cfg, path)
        counts = count(index, rows, partners, truncation, dropped=dropped if name == "train" else 0, same_prompt=same_prompt)
        splits.append(Split(name, out, rows, partners, counts, truncation))
    prefix_splits = int(index.prefix_split[kept].sum())
    if prefix_splits:
        log(
            f"note: {prefix_splits} conversational rows were split at the common prefix of the prompt and full renderings (chat template renders the prompt differently)"
        )
    return splits


def _log_dropped(path: Path, rows: np.ndarray) -> None:
    with StagingReader(path) as reader:
        ids = reader.take(rows[:10], "id")
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    log(f"dropped {len(rows)} rows left with an empty prompt or completion by tokenization or truncation: {', '.join(map(repr, ids))}{more}")


def cache_rows(reader: StagingReader, s: Split, a: int, b: int) -> list[CacheRow]:
    """Rows a..b of split `s`, read from staging: each with its partner's completion, both cut
    by the split's truncation rule."""
    rows, partners = s.rows[a:b], s.partners[a:b]
    ids, labels = (reader.take(rows, c) for c in ("id", "label"))
    prompts, completions = reader.take(rows, "prompt_ids"), reader.take(rows, "completion_ids")
    kl_ids, kl_completions = reader.take(partners, "id"), reader.take(partners, "completion_ids")
    out = []
    for k in range(len(rows)):
        cut = s.truncation.apply(prompts[k], completions[k], kl_completions[k])
        out.append(
            CacheRow(
                id=ids[k],
                label=labels[k],
                prompt_ids=cut.prompt_ids,
                completion_ids=cut.completion_ids,
                kl_source_id=kl_ids[k],
                kl_completion_ids=cut.kl_completion_ids,
                truncated=cut.truncated,
            )
        )
    return out


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
    template = load_chat_template(cfg.chat_template, cfg.chat_template_kwargs)
    tokenizer_id = tokenizer_identity(tokenizer)  # --model's own: what kto-train checks against
    install_template(tokenizer, template)
    numerics = parse_numerics(cfg.dtype, state.device)
    layout = shard_layout(cfg.rows_per_shard, cfg.batch_tokens, cfg.prefix_sharing)
    outs = {"train": cfg.out, **({"eval": cfg.out / S.EVAL_DIR} if cfg.eval_fraction > 0 else {})}
    contents = {name: content_of(cfg, source, tokenizer_id, numerics, name, template) for name in outs}
    fingerprints = {name: content.fingerprint for name, content in contents.items()}
    created = not cfg.out.exists()
    _claim_out(cfg, outs, contents, layout, state, held)
    try:
        staged = stage_rows(cfg, tokenizer, template, contents["train"], state)
        splits = build_splits(cfg, staged, leading_bos_id(tokenizer), main=state.is_main_process)
    except InputError:
        if created and state.is_main_process:
            shutil.rmtree(cfg.out, ignore_errors=True)  # bad input: leave nothing behind
        raise
    for s in splits:
        if s.counts.desirable == 0 or s.counts.undesirable == 0:
            log(
                f"warning: the {s.name} split is all {'desirable' if s.counts.undesirable == 0 else 'undesirable'} ({s.counts.rows} rows); KTO learns from both classes"
            )
    todo = {s.name: _pending_shards(s, fingerprints[s.name], layout, cfg.rows_per_shard, state) for s in splits}
    scorer = None
    if any(todo.values()):
        scorer = load_completion_logps(
            source,
            dtype=numerics.weights,
            device=state.device,
            device_map=cfg.device_map,
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
            chunk_size=cfg.chunk_size,
        )
        _check_vocabulary(staged, splits, scorer.lm, tokenizer, cfg.model)
    manifests = []
    for s in splits:
        _score_and_write(s, todo[s.name], scorer, tokenizer, cfg, fingerprints[s.name], layout, state, numerics, staged, on_scored)
        state.wait_for_everyone()
        manifest = Manifest(
            content=contents[s.name],
            layout={**layout, "num_processes": state.num_processes},
            counts=_with_scoring_counts(s, cfg, staged),
            shards=[],
            info=_info(cfg, state),
        )
        if state.is_main_process:
            manifest = _finish(s, manifest, tokenizer, cfg.rows_per_shard)
        manifests.append(manifest)
        state.wait_for_everyone()
    if state.is_main_process:
        staged.unlink()  # the cache is complete; a rerun re-stages (and skips every shard)
        _summary(manifests, time.perf_counter() - started)
    return manifests


def _claim_out(cfg, outs: dict[str, Path], contents: dict, layout: dict, state, held: contextlib.ExitStack) -> None:
    """Main process: lock --out, then resume, clear or refuse each split's folder; the others wait.

    The lock is taken before any process writes (the others only start after the broadcast),
    and a refusal reaches every process, so none is left waiting in a collective.
    """
    error = None
    if state.is_main_process:
        try:
            held.enter_context(locked_dir(cfg.out, "--out"))
            for name, out in outs.items():
                prepare_out_dir(out, contents[name], layout, cfg.overwrite)
        except InputError as exc:
            error = str(exc)
    if state.num_processes > 1:
        import torch.distributed as dist

        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise InputError(error)


def _check_vocabulary(staged: Path, splits: list[Split], lm, tokenizer, model: str) -> None:
    """Refuse token ids the model has no embedding row for (a tokenizer larger than the model)."""
    rows = lm.get_input_embeddings().weight.shape[0]
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id >= rows:
        raise InputError(f"--model {model}: the tokenizer's pad token id {tokenizer.pad_token_id} is not below the model's vocabulary size {rows}")
    index = read_index(staged)
    used = np.concatenate([s.rows for s in splits])
    bad = used[index.max_id[used] >= rows]
    if not len(bad):
        return
    i = int(np.sort(bad)[0])
    with StagingReader(staged) as reader:
        ids = np.concatenate([reader.ids("prompt_ids", i), reader.ids("completion_ids", i)])
        row_id = reader.value("id", i)
    raise InputError(
        f"row {row_id!r}: token id {int(ids[ids >= rows][0])} is not below the vocabulary size {rows} of --model {model}; "
        "its tokenizer has more tokens than the model has embeddings"
    )


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


def _shard_sequences(rows: list[CacheRow]) -> tuple[list, list, list]:
    """A shard's work: two sequences per row (main, KL), keyed (id, 0) and (id, 1).

    Main and KL sequences share the batches, and with prefix sharing every sequence of the
    shard with the same prompt ids (a row's own two, the pairs of a paired dataset, a repeated
    system prompt) is scored after one pass over that prompt. Grouping stays inside the shard,
    so each shard remains a pure function of its rows and the configuration.
    """
    prompts = [r.prompt_ids for r in rows] * 2
    completions = [r.completion_ids for r in rows] + [r.kl_completion_ids for r in rows]
    keys = [(r.id, 0) for r in rows] + [(r.id, 1) for r in rows]
    return prompts, completions, keys


def _with_scoring_counts(s: Split, cfg: PrecomputeConfig, staged: Path) -> Counts:
    """Tokens represented, scored and saved: planned per shard, the same whichever shards this
    run scored (a resumed run skips some), so the manifest stays byte-identical."""
    represented = scored = 0
    for a, b in _shard_slices(len(s.rows), cfg.rows_per_shard):
        with StagingReader(staged) as reader:
            rows = cache_rows(reader, s, a, b)
        plan = plan_scoring(*_shard_sequences(rows), share_prefixes=cfg.prefix_sharing)
        represented, scored = represented + plan.represented_tokens, scored + plan.computed_tokens
    return replace(s.counts, represented_tokens=represented, scored_tokens=scored, prefix_tokens_saved=represented - scored)


def _score_and_write(s: Split, shard_ids, scorer, tokenizer, cfg, fingerprint, layout, state, numerics: Numerics, staged: Path, on_scored=None) -> None:
    if not shard_ids:
        return
    s.out.mkdir(parents=True, exist_ok=True)
    slices = _shard_slices(len(s.rows), cfg.rows_per_shard)
    total_rows = sum(slices[k][1] - slices[k][0] for k in shard_ids)
    progress = Progress(total_rows, f"{s.name} rows", enabled=state.is_main_process)
    for k in shard_ids:
        with StagingReader(staged) as reader:  # mapped for one shard at a time: see staging.py
            rows = cache_rows(reader, s, slices[k][0], slices[k][1])
        prompts, completions, keys = _shard_sequences(rows)
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
    journal, fingerprint = Journal(s.out), manifest.fingerprint
    layout = {k: manifest.layout[k] for k in shard_layout(1, 1, False)}
    entries = []
    for k, (a, b) in enumerate(_shard_slices(len(s.rows), rows_per_shard)):
        path = s.out / S.shard_name(k)
        recorded = journal.recorded_sha(path.name, fingerprint, layout)
        if not path.is_file() or recorded is None:
            raise RuntimeError(f"{path}: missing, or not in the journal, after every process finished")
        if (actual := sha256_file(path)) != recorded:
            raise InputError(
                f"{path}: sha256 {actual[:16]}… is not the {recorded[:16]}… recorded when it was written; "
                "it changed during the run: run the same command again to rebuild it"
            )
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
        saved = f" ({c.prefix_tokens_saved} saved by prefix sharing, of {c.represented_tokens})" if m.layout.get("prefix_sharing") else ""
        log(
            f"{m.content.split}: {c.rows} rows ({c.desirable} desirable, {c.undesirable} undesirable), "
            f"{c.dropped} dropped, {c.truncated} truncated ({c.prompt_truncated} prompts, {c.completion_truncated} completions), "
            f"{c.same_prompt_kl_pairs} same-prompt KL pairs, {c.scored_tokens} tokens scored{saved}, {len(m.shards)} shards"
        )
    log(f"done in {seconds:.1f} s, peak memory {peak_memory_gb():.2f} GB")
