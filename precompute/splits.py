"""Staged rows -> splits: drop, hold out the eval rows, pair each row with its KL partner on
the cycle (pairing.py) and count, from the staged index alone. A shard's rows are read back
from staging and cut later, one shard at a time (pairing.py `shard_values`). Everything here is
a pure function of the staged rows and the configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kto.formats import schema as S
from kto.formats.cache import ArrowFile
from kto.formats.errors import InputError, log
from kto.formats.manifest import Counts

from .config import PrecomputeConfig
from .eval_split import describe, split_eval
from .pairing import Truncation, kl_partners
from .staging import WHOLE_COMPLETION, StagedIndex, check_staged_ids, read_index
from .tokenize import PromptCut


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


class _LazyIds:
    """ids[i] read from the staging file only when pairing has to name a row in an error."""

    def __init__(self, path: Path, rows: np.ndarray):
        self.path, self.rows = path, rows

    def __getitem__(self, i: int) -> str:
        with ArrowFile(self.path) as reader:
            return reader.rows([int(self.rows[i])], [S.ID])[S.ID][0]


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
    kept_completion, kept_kl = truncation.kept_lengths(prompt_len, completion_len, kl_len)
    how = index.prompt_cut[rows]  # prompts are cut at tokenization (tokenize.PromptCut)
    prompt_cut, completion_cut = how != PromptCut.NONE, kept_completion < completion_len
    return Counts(
        rows=len(rows),
        desirable=int(index.label[rows].sum()),
        undesirable=int((~index.label[rows]).sum()),
        dropped=dropped,
        truncated=int((prompt_cut | completion_cut).sum()),
        prompt_truncated=int(prompt_cut.sum()),
        prompt_cut_by_turns=int((how == PromptCut.TURNS).sum()),
        prompt_cut_mid_text=int((how == PromptCut.MID_TEXT).sum()),
        completion_truncated=int(completion_cut.sum()),
        kl_completion_truncated=int((kept_kl < kl_len).sum()),
        prompt_tokens=int(prompt_len.sum()),
        completion_tokens=int(kept_completion.sum()),
        kl_completion_tokens=int(kept_kl.sum()),
        same_prompt_kl_pairs=same_prompt,
        template_prefix_splits=int(index.prefix_split[rows].sum()),
    )


def build_splits(cfg: PrecomputeConfig, path: Path, bos_id: int | None, main: bool = True) -> list[Split]:
    """Drop, split, pair and count the staged rows; `bos_id` is re-attached to cut prompts."""
    truncation = Truncation(cfg.max_length, cfg.max_prompt_length, bos_id)
    index = read_index(path)
    check_staged_ids(index, path)
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
    labels = index.label[kept]
    train, evals = split_eval(kept.tolist(), labels.tolist(), index.prompt_key[kept].tolist(), cfg.eval_fraction, cfg.seed)
    if evals and main:
        log(describe(index.label[evals].tolist(), int(labels.sum()), int((~labels).sum())))
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
    with ArrowFile(path) as reader:
        ids = reader.rows(rows[:10], [S.ID])[S.ID]
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    log(f"dropped {len(rows)} rows left with an empty prompt or completion by tokenization or truncation: {', '.join(map(repr, ids))}{more}")


def check_vocabulary(staged: Path, splits: list[Split], lm, tokenizer, model: str) -> None:
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
    with ArrowFile(staged) as reader:
        row = reader.rows([i], [S.ID, S.PROMPT_IDS, WHOLE_COMPLETION])
    ids, row_id = np.concatenate([row[S.PROMPT_IDS].values, row[WHOLE_COMPLETION].values]), row[S.ID][0]
    raise InputError(
        f"row {row_id!r}: token id {int(ids[ids >= rows][0])} is not below the vocabulary size {rows} of --model {model}; "
        "its tokenizer has more tokens than the model has embeddings"
    )
