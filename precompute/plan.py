"""The plan: which staged rows go into which split, in which order, with which KL partner, and
how each shard's rows are cut. Everything here is a pure function of the staged rows (their
index: labels, lengths, the keys of their texts and of their token ids), the configuration and
the seed; staging's file is read back only for ids in errors and, one shard at a time, for the rows a shard holds.

Staged rows -> splits (`build_splits`): drop, hold out the eval rows, pair each row with its KL
partner on the cycle and count, from the staged index alone. A shard's rows are read back from
staging and cut later, one shard at a time (`shard_values`).

## The eval split

--eval-fraction: which rows are held out as OUT/eval/, stratified by label and grouped by prompt.

Two rules, both pure functions of the rows' labels and prompt groups and the seed (rows with the
same prompt text or the same prompt token ids are one group: `same_groups`):
- **by label**: the eval split holds round(f · n_D) desirable and round(f · n_U) undesirable rows
  (not round(f · n) rows of whatever the shuffle gives), and when both labels exist each label
  with at least 2 rows gets at least one eval row and keeps at least one training row, so a small
  set no longer gets an all-desirable eval split. The total stays round(f · n): when the
  at-least-one rule pushes the two targets past it, the larger one gives way.
- **by prompt group**: rows with the same prompt (a pair's chosen and rejected rows, or several
  answers to one question) land on one side together, so the eval split never scores a prompt
  that training has seen. Groups are visited in a seeded shuffle, those holding the rarer label
  first (else a few groups of the common label could fill its target before any group of the
  rarer one, mostly mixed pairs, was seen, and leave that label with no eval row), and a group
  is taken whole when it fits both label targets; a group that would overshoot one is skipped.
  Large groups can therefore leave the eval split short of its targets; the log line says what
  it holds.

Tiny sets: round(f · n) < 2 is refused (each split needs at least 2 rows, as before); a label
with a single row stays in training, and the log says the eval split lacks it.

## KL pairing and truncation

Mismatched KL pairs: each row i borrows the completion of another row j ≠ i, its successor on
one seeded cycle through the data.

KTO's reference point z estimates KL(πθ‖πref) on x ⊥ y′: a prompt with a completion written for
some *other* prompt. The paper takes y′ from the same batch as y, so z and the rewards are
measured on equally fresh completions. A partner drawn from anywhere in the dataset is, late in
an epoch, often a row the policy has already been trained on (its log-ratio is then high or low
under any prompt), and z drifts with the position in the epoch (docs/kl_pairing.md).

So the pairs are drawn as one cycle that training can follow: a seeded shuffle (of prompt
groups, so rows sharing a prompt stay together for prefix-shared scoring) is cut into
an even number of blocks of at most BLOCK_ROWS rows, each block is sorted by length (ascending
and descending in turn, so the joins between blocks, the wrap included, stay short) group by
group, so that rows sharing a prompt sit side by side, and each row takes the completion of the
row after it. The rows are stored in this cycle order; kto-train builds each optimizer step from
a segment of it (roughly, when it gathers a prompt's rows into one micro-batch: train/data.py),
so almost all of a step's partners are trained in the same step, and neighbours have similar
lengths (little padding in either pass). Nothing here depends on the batch size.

Constraints, in order:
- never j = i, and never a j whose completion equals row i's own, as text or as the token ids
  the model sees (that would be a matched sample in disguise: " bye" and " bye<|im_end|>" are
  one completion once the EOS is appended; `same_groups`);
- prefer a j whose prompt differs from row i's, in text and in token ids (a ChatML prompt
  rendered beforehand is the same prompt as the messages it renders): rows that break this are first moved apart
  (a later row that fits is swapped in); where none is left, a row takes the nearest later one
  that shares the prompt, and that is counted (a matched-prompt pair biases z towards the
  matched log-ratio).

Truncation lives here too (`Truncation`, `shard_values`), where it runs: a row's KL sequence is
cut behind its own prompt, so the cut depends on the partner. Only the prompt's cut runs
earlier, at tokenization (tokenize.py: cutting a conversation by whole turns needs its
messages and the chat template), by this module's rule, which depends on the row alone.

Truncation rule (TRUNCATION_RULE; the manifest records it under `truncation`):
- A row whose prompt P + own completion C fits max_length is never cut, whatever its KL partner.
- Otherwise a prompt longer than max_prompt_length is cut to fit it (TRL's rule: the cut depends
  only on the prompt and the limits, so every row of a prompt group whose prompt is cut gets the
  same ids, and a group has at most two variants: whole, or cut). A conversation loses whole
  earliest turns (a leading system message is kept; a turn is a user message and the assistant
  and tool messages after it) and is re-rendered with the chat template, so it still starts with
  a turn header; only when [system +] the last user turn alone is too long is that turn's text
  cut, keeping its end (the question sits there) between its header and the generation prompt.
  When the system message (given, or the template's own default) leaves it no room, the system
  text is cut that way instead, its header kept.
  A plain-text prompt keeps its end, BOS re-attached when the tokenizer starts text with one.
  A prompt within max_prompt_length stays whole.
- The completion keeps its start, max_length − P' tokens (P' the prompt as kept); the KL sequence
  is the row's own prompt P' + its partner's whole completion cut at its end to max_length − P'.
So a row's main and KL sequences share one prompt (prefix sharing packs them), the partner's
completion is never cut by the partner's own prompt, and a completion keeps at least
min(its length, max_length − max_prompt_length) tokens (max_prompt_length < max_length). A row
whose prompt or completion is empty after tokenization is dropped (and counted) before pairing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kto.formats import schema as S
from kto.formats.cache import ArrowFile
from kto.formats.errors import InputError, log
from kto.formats.manifest import Counts

from .config import PrecomputeConfig
from .staging import WHOLE_COMPLETION, StagedIndex, check_staged_ids, read_index
from .tokenize import PromptCut

# ---- the same prompt, the same completion: what the model sees --------------------------------
#
# Which staged rows have the same prompt, or the same completion, for the guards of this module: KL
# pairing (never a partner with the same completion, a partner with another prompt wherever one
# exists), the eval split's prompt groups and the --eval-data overlap check.
#
# Staging keys each row by its prompt and completion text (staging.py `text_key`), but two texts
# can give the model the same token ids: a text row's " bye" and " bye<|im_end|>" (text_ids appends
# the EOS only where it is missing), a ChatML prompt rendered beforehand and the chat messages it
# renders. Compared by text, such a row could take its own completion as its KL sequence
# (ref_kl_logp == ref_logp, a matched sample in disguise), a prompt could sit on both sides of the
# eval split, and the training rows given again with trailing EOS strings would pass as held out.
# So two rows count as the same where their text keys or the keys of their staged ids (the prompt
# as cut at tokenization, the whole completion) are equal, closed transitively (`same_groups`).
#
# For ordinary data, where equal ids come from equal texts, the groups are the text keys' own and
# each is named by its first row, so the first-appearance orders, seeded shuffles and cycles built
# on them are unchanged: only rows the model cannot tell apart join a group.


def same_groups(*keys: np.ndarray) -> np.ndarray:
    """[rows] int64: the first row of each row's group, where rows whose keys in any one of `keys`
    are equal share a group (and so on transitively). With one key array the groups are its
    equal keys'; a group's name is its first row, so groups keep their first-appearance order."""
    n = len(keys[0])
    group = np.arange(n, dtype=np.int64)
    inverses = [np.unique(np.asarray(k), return_inverse=True)[1].reshape(-1) for k in keys]
    while True:  # min-label propagation: each pass lowers a row's name to its group's first row
        before = group
        for inverse in inverses:
            least = np.full(int(inverse.max(initial=-1)) + 1, n, dtype=np.int64)
            np.minimum.at(least, inverse, group)
            group = least[inverse]
        if np.array_equal(group, before):
            return group


# ---- staged rows -> splits --------------------------------------------------------------------


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
    staged: Path
    """The staging file its rows index: --data's, or --eval-data's for a held-out eval split."""


class _LazyIds:
    """ids[i] read from the staging file only when pairing has to name a row in an error."""

    def __init__(self, path: Path, rows: np.ndarray):
        self.path, self.rows = path, rows

    def __getitem__(self, i: int) -> str:
        with ArrowFile(self.path) as reader:
            return reader.rows([int(self.rows[i])], [S.ID])[S.ID][0]


IdsKeys = tuple[np.ndarray, np.ndarray]
"""Keys of every staged row's prompt ids (of its text where the prompt was cut) and completion ids."""


def prompt_groups(index: StagedIndex, ids: IdsKeys, rows: np.ndarray) -> list[int]:
    """Each of `rows`' prompt group: rows with the same prompt text or the same prompt ids."""
    return same_groups(index.prompt_key[rows], ids[0][rows]).tolist()


def pair_rows(index: StagedIndex, rows: np.ndarray, cfg: PrecomputeConfig, path: Path, ids: IdsKeys) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows in the pairing's cycle order, each row's KL partner (staged row indices), and
    how many pairs share a prompt. kto-train's steps follow the cycle (below). Prompts and
    completions are told apart by what the model sees (`same_groups`): their text or their ids."""
    lengths = np.minimum(index.prompt_len[rows] + index.completion_len[rows], cfg.max_length)
    completions = same_groups(index.completion_key[rows], ids[1][rows]).tolist()
    pairing = kl_partners(prompt_groups(index, ids, rows), completions, _LazyIds(path, rows), cfg.seed, lengths=lengths.tolist())
    order = np.asarray(pairing.order, dtype=np.int64)
    return rows[order], rows[np.asarray(pairing.partner, dtype=np.int64)[order]], pairing.same_prompt


def count(index: StagedIndex, rows: np.ndarray, partners: np.ndarray, truncation: Truncation, *, dropped: int, same_prompt: int) -> Counts:
    """The split's counts, from lengths alone (`Truncation.kept_lengths`, the arithmetic that cuts)."""
    prompt_len, completion_len, kl_len = index.prompt_len[rows], index.completion_len[rows], index.completion_len[partners]
    kept_completion, kept_kl = truncation.kept_lengths(prompt_len, completion_len, kl_len)
    how = index.prompt_cut[rows]  # prompts are cut at tokenization (PromptCut)
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


@dataclass(frozen=True)
class Staged:
    """One staging file's index, its kept rows and their count of dropped ones, and its ids' keys."""

    path: Path
    index: StagedIndex
    kept: np.ndarray
    dropped: int
    ids: IdsKeys


def _kept_rows(path: Path, inputs: tuple[Path, ...], flag: str, main: bool) -> Staged:
    """The staged rows of `inputs` that tokenization kept (at least 2), and how many it dropped."""
    index = read_index(path)
    check_staged_ids(index, path)
    if index.n < 2:
        files = ", ".join(str(p) for p in inputs) or "no input files"
        raise InputError(f"need at least 2 examples, got {index.n} (from {files})")
    kept = np.flatnonzero(index.kept)
    dropped = index.n - len(kept)
    if len(kept) < 2:
        raise InputError(
            f"{flag} {', '.join(map(str, inputs))}: {len(kept)} rows left after dropping {dropped} with an empty prompt or completion; need at least 2"
        )
    if dropped and main:
        _log_dropped(path, np.flatnonzero(~index.kept))
    # A prompt cut at tokenization keeps only its end, which different prompts may share (a common
    # block of rules before "Answer:"): joined by those ids, distinct questions became one group,
    # so the eval split depended on --max-prompt-length and could hold no row. A cut prompt is
    # keyed by its text alone, as before ids were compared; an uncut one by its text or its ids.
    prompt_ids = np.where(index.prompt_cut == PromptCut.NONE, index.prompt_ids_key, index.prompt_key)
    return Staged(path, index, kept, dropped, (prompt_ids, index.completion_ids_key))


def _check_held_out_rows(train: Staged, held_out: Staged, inputs: tuple, main: bool) -> None:
    """--eval-data rows that are --data rows (the same prompt, completion and label, as text or
    as the token ids the model sees: " yes" and " yes<|im_end|>" are one completion to it),
    whatever the files' names or formats: all of them is the training data given twice, refused;
    some is said in a warning (real datasets repeat a few rows across their splits)."""

    def rows(s: Staged) -> Iterator[tuple[tuple, tuple]]:  # (by text, by ids) for each kept row
        at, ix = s.kept, s.index
        label = ix.label[at].tolist()
        texts = zip(ix.prompt_key[at].tolist(), ix.completion_key[at].tolist(), label)
        return zip(texts, zip(s.ids[0][at].tolist(), s.ids[1][at].tolist(), label))

    texts, ids = {text for text, _ in rows(train)}, {seen for _, seen in rows(train)}
    shared = sum(text in texts or seen in ids for text, seen in rows(held_out))
    what = f"--eval-data {', '.join(map(str, inputs))}"
    same = "the same prompt, completion and label, as text or as token ids"
    if shared == len(held_out.kept):
        raise InputError(f"{what}: all {shared} of its rows are --data rows ({same}); evaluation would score rows trained on")
    if shared and main:
        log(f"warning: {what}: {shared} of its {len(held_out.kept)} rows are also --data rows ({same})")


def build_splits(
    cfg: PrecomputeConfig, path: Path, bos_id: int | None, main: bool = True, held_out: Path | None = None, out: Path | None = None
) -> list[Split]:
    """Drop, split, pair and count the staged rows; `bos_id` is re-attached to cut prompts.
    `held_out`: the staged --eval-data rows, which are the eval split whole (no fraction).
    `out`: the folder the splits are written to (default --out; --overwrite builds in `.next/`)."""
    root = cfg.out if out is None else out
    truncation = Truncation(cfg.max_length, cfg.prompt_cap, bos_id)
    data = _kept_rows(path, cfg.data, "--data", main)
    index, kept = data.index, data.kept
    labels = index.label[kept]
    train, evals = split_eval(kept.tolist(), labels.tolist(), prompt_groups(index, data.ids, kept), cfg.eval_fraction, cfg.seed)
    # Each split: (name, its staging file's rows, its staged rows, out, rows dropped).
    parts = [("train", data, train, root, data.dropped)]
    if held_out is not None:  # eval_fraction is 0 then: every --data row trains
        eval_rows = _kept_rows(held_out, cfg.eval_data, "--eval-data", main)
        _check_held_out_rows(data, eval_rows, cfg.eval_data, main)
        if main:
            d = int(eval_rows.index.label[eval_rows.kept].sum())
            log(f"eval split: {len(eval_rows.kept)} rows ({d} desirable, {len(eval_rows.kept) - d} undesirable), the rows of --eval-data")
        parts.append(("eval", eval_rows, eval_rows.kept.tolist(), root / S.EVAL_DIR, eval_rows.dropped))
    elif evals:
        if main:
            log(describe(index.label[evals].tolist(), int(labels.sum()), int((~labels).sum())))
        parts.append(("eval", data, evals, root / S.EVAL_DIR, 0))
    splits = []
    for name, staged, part, out, part_dropped in parts:
        if not part:
            continue
        part = np.asarray(part, dtype=np.int64)
        rows, partners, same_prompt = pair_rows(staged.index, part, cfg, staged.path, staged.ids)
        counts = count(staged.index, rows, partners, truncation, dropped=part_dropped, same_prompt=same_prompt)
        splits.append(Split(name, out, rows, partners, counts, truncation, staged.path))
    prefix_splits = int(index.prefix_split[kept].sum())
    if prefix_splits:
        log(
            f"note: {prefix_splits} conversational rows were split at the common prefix of the prompt and full renderings (the chat template renders "
            "the prompt differently, or the tokenizer merges the generation prompt's end with the completion's start: those prompts end a token or more before the one served at inference)"
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


def check_positions(split: Split, lm: Any, max_length: int) -> None:
    """Refuse, before any shard is scored, a row whose longest sequence (its prompt + completion
    or prompt + KL completion, as cut) has more tokens than `lm` scores as one function of them
    (position_limit): past a learned table (GPT-2's `wpe`, OPT's `embed_positions`) its forward
    ends in an IndexError; past a dynamic or longrope rotary range its log-probs would depend on
    the rows batched beside it. Other models (plain rotary, ALiBi) take any length."""
    from kto.formats.compute.logprob import position_limit  # torch: only once a model is loaded

    limit = position_limit(lm)
    if limit is None or not len(split.rows):
        return
    index = read_index(split.staged)
    prompt = index.prompt_len[split.rows]
    kept = split.truncation.kept_lengths(prompt, index.completion_len[split.rows], index.completion_len[split.partners])
    longest = prompt + np.maximum(*kept)
    at = int(np.argmax(longest))
    if longest[at] <= limit.count:
        return
    with ArrowFile(split.staged) as reader:
        row_id = reader.rows([int(split.rows[at])], [S.ID])[S.ID][0]
    raise InputError(
        f"--max-length {max_length}: row {row_id!r} has {int(longest[at])} tokens, more than the {limit.count} positions "
        f"{limit.what}; give --max-length {limit.count} or less"
    )


# ---- the eval split ---------------------------------------------------------------------------

EVAL_SPLIT_RULE = (
    "stratified by label; rows sharing a prompt on one side; seeded shuffle of prompt groups, those holding the rarer label first,"
    " each taken whole when it fits both label targets; a prompt group is equal prompt text or equal prompt token ids (of prompts not cut at tokenization)"
)
"""The rule in words, recorded in an eval-split cache's content (formats/manifest.py CacheContent): a cache
split by the earlier unstratified rule has no such key, so its fingerprint differs."""


@dataclass(frozen=True)
class EvalTargets:
    desirable: int
    undesirable: int


def eval_targets(n_desirable: int, n_undesirable: int, fraction: float) -> EvalTargets:
    """How many rows of each label the eval split aims for (see the module docstring)."""
    total = round(fraction * (n_desirable + n_undesirable))
    d, u = round(fraction * n_desirable), round(fraction * n_undesirable)
    if n_desirable and n_undesirable:
        d = min(max(d, 1), n_desirable - 1) if n_desirable >= 2 else 0
        u = min(max(u, 1), n_undesirable - 1) if n_undesirable >= 2 else 0
        while d + u > total and max(d, u) > 1:  # the larger target gives way, never below 1
            if d >= u:
                d -= 1
            else:
                u -= 1
    return EvalTargets(d, u)


def split_eval(rows: list, labels: Sequence[bool], groups: Sequence[Hashable], fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval) parts of `rows` (labels[i] and groups[i] belong to rows[i]); both keep input order."""
    if fraction == 0:
        return rows, []
    n = len(rows)
    if round(fraction * n) < 2:
        raise InputError(f"--eval-fraction {fraction}: leaves {round(fraction * n)} eval rows of {n}; each split needs at least 2")
    n_desirable = sum(map(bool, labels))
    targets = eval_targets(n_desirable, n - n_desirable, fraction)
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    order = list(members.values())  # first-appearance order, then a seeded shuffle
    random.Random(f"eval-{seed}").shuffle(order)
    # The groups holding the rarer label go first (in the shuffle's order): visited in plain
    # shuffle order, a few groups of the other label could fill its target first and leave no
    # room for any group of the rarer one, which mostly sits in mixed groups (a pair's rows).
    rarer = None if 2 * n_desirable == n else 2 * n_desirable < n  # True: desirable rows are the rarer
    if rarer is not None:
        order.sort(key=lambda group: not any(bool(labels[i]) == rarer for i in group))  # stable
    picked: set[int] = set()
    d = u = 0
    for group in order:
        gd = sum(bool(labels[i]) for i in group)
        gu = len(group) - gd
        if d + gd <= targets.desirable and u + gu <= targets.undesirable:
            picked.update(group)
            d, u = d + gd, u + gu
            if (d, u) == (targets.desirable, targets.undesirable):
                break
    train = [r for i, r in enumerate(rows) if i not in picked]
    evals = [r for i, r in enumerate(rows) if i in picked]
    for name, part in (("train", train), ("eval", evals)):
        if len(part) < 2:
            raise InputError(
                f"--eval-fraction {fraction}: leaves {len(part)} {name} rows of {n} (rows sharing a prompt stay on one side); each split needs at least 2"
            )
    return train, evals


def describe(evals: Sequence[bool], n_desirable: int, n_undesirable: int) -> str:
    """The log line: what the eval split holds, and a label it lacks and why."""
    d = sum(map(bool, evals))
    u = len(evals) - d
    line = f"eval split: {len(evals)} rows ({d} desirable, {u} undesirable), stratified by label, rows sharing a prompt on one side"
    for name, have, total in (("desirable", d, n_desirable), ("undesirable", u, n_undesirable)):
        if total and not have:
            why = "its only row stays in training" if total == 1 else "no prompt group of that label fitted the targets"
            line += f"; note: no {name} row in it ({why})"
    return line


# ---- the KL cycle, and the cut ----------------------------------------------------------------

# Past this many candidates, fall back to the first acceptable one seen: keeps the worst case
# (one prompt shared by almost every row) linear-ish rather than quadratic.
MAX_SCAN = 4096
# How far ahead `_spread` looks for a row to swap in: paired data needs one or two; past that
# (one prompt shared by most rows) the partner scan's counted fallback takes over.
SPREAD_SCAN = 64
# Rows per length-sorted block of the cycle. Large enough that a micro-batch of neighbours has
# similar lengths (0.4 % of a 32-2048-token mix's range per 8 rows), small enough that a block is
# still a random sample of the data. Part of the cache's content via PAIRING_RULE.
BLOCK_ROWS = 2048
# Prompt groups of up to this many rows sit side by side on the cycle (`cycle_order`): a paired
# dataset's chosen and rejected, a few sampled completions per prompt. Part of PAIRING_RULE.
SIDE_BY_SIDE_ROWS = 16
TRUNCATION_RULE = (
    "own-length: nothing cut while prompt + own completion fits max_length; else a prompt over max_prompt_length "
    "is cut to it (conversations: earliest whole turns dropped, system kept, re-rendered; inside the last user "
    "turn keeping its end only when that alone is too long, else inside the system message (the template's own default one too), its header kept even with none of its text, "
    "else inside one of the largest texts after that user turn (a turn's text or a string in a tool call's arguments, kept in its own JSON escaping; "
    "the three largest by tokens, then the longest by characters), else inside both the system text (to at most half their room) and the last user text, "
    "else its last max_prompt_length ids; "
    "a token straddling a header and its text stays with the header; a text the template trims is found stripped; "
    "one it writes as JSON (tojson) is found escaped, cut by whole characters and re-rendered; "
    "text: its end, BOS re-attached); then the completion "
    "keeps its start, max_length - prompt; KL = own prompt + partner's whole completion cut to max_length - prompt"
)
PAIRING_RULE = (
    f"cycle through an even number of blocks of at most {BLOCK_ROWS} rows (zigzag) of a seeded shuffle of prompt groups "
    f"(a group of more than {SIDE_BY_SIDE_ROWS} rows shuffled row by row), "
    f"each block sorted by prompt group (a group of up to {SIDE_BY_SIDE_ROWS} rows by its longest row, then its own rows by length; "
    "a larger group's rows by their own length); "
    "partner = next acceptable row; rows stored in cycle order; "
    "a prompt group, and the same completion, is equal text or equal token ids (a prompt not cut at tokenization, the whole completion)"
)


@dataclass(frozen=True)
class Pairing:
    order: list[int]
    """The cycle: rows are written in this order, and order[k] normally pairs with order[k+1]."""
    partner: list[int]
    """partner[i] = j, the row whose completion row i uses for its KL sequence (input indices)."""
    same_prompt: int
    """How many rows had to fall back to a partner sharing their prompt."""


def cycle_order(lengths: Sequence[int], seed: int, block_rows: int = BLOCK_ROWS, groups: Sequence[Hashable] | None = None) -> list[int]:
    """A seeded shuffle cut into blocks, each sorted by length, in alternating directions.

    An even number of blocks of at most `block_rows` (equal sizes to one row), so that the
    cycle's wrap from the last block back to the first also joins two short rows. With `groups`
    (prompt groups: pair_rows passes same_groups), the shuffle moves whole groups and a block is sorted group by group (by
    a group's longest row, then its rows by their own length): rows sharing a prompt (a paired
    dataset's chosen and rejected) sit next to each other, so kto-precompute scores their prompt
    once (prefix sharing), `_spread` interleaves two neighbouring groups, and kto-train, which
    trains a group in one micro-batch, finds a row's KL partner (its successor) in the same
    step. Sorted row by row instead, a pair's rows lay a median 22 places apart on
    dpo_en_demo.json and a third of the partners had been trained in an earlier step
    (docs/kl_pairing.md, "Prompt groups in one micro-batch")."""
    if groups is None:  # every row its own group: the shuffle of one-row groups is that of rows
        groups = range(len(lengths))
    members: dict[Hashable, list[int]] = {}
    for i in range(len(lengths)):
        members.setdefault(groups[i], []).append(i)
    # A larger group is shuffled row by row: moved whole, 10k rows of one prompt filled blocks
    # alone, where no row had another prompt to pair with (5 prompts over 50k rows: 43 % of the
    # KL pairs shared their prompt). Where every group is small the list, and so the shuffle, is
    # the one before.
    shuffled = [unit for group in members.values() for unit in ([group] if len(group) <= SIDE_BY_SIDE_ROWS else [[i] for i in group])]
    random.Random(seed).shuffle(shuffled)
    order = [i for group in shuffled for i in group]
    group_of = [0] * len(lengths)  # the rank of a row's group in the shuffle
    for g, group in enumerate(shuffled):
        for i in group:
            group_of[i] = g
    blocks = 2 * math.ceil(len(order) / (2 * block_rows))
    size = math.ceil(len(order) / blocks) if blocks else 1
    out: list[int] = []
    for b, start in enumerate(range(0, len(order), size)):
        block = order[start : start + size]
        sign = -1 if b % 2 else 1
        longest: dict[int, int] = {}
        for i in block:
            longest[group_of[i]] = max(longest.get(group_of[i], 0), lengths[i])
        # A group ranks by its longest row, ties by the shuffle (groups of one row then sort
        # exactly as rows do, ties in the shuffle's order), and its rows follow each other, by
        # their own length. A larger group's rows rank by their own length, spread among the
        # others' as before: side by side, `_spread` could not find each of them a partner with
        # another prompt within SPREAD_SCAN, and they would share one (identical KL sequences).
        rank = {i: longest[group_of[i]] for i in block}  # a larger group's rows are groups of one: their own lengths
        out.extend(sorted(block, key=lambda i: (sign * rank[i], group_of[i], sign * lengths[i])))
    return out


def _spread(order: list[int], prompts: Sequence[Hashable], completions: Sequence[Hashable]) -> None:
    """Swap another row in where a row's successor shares its prompt or completion (equal keys:
    pair_rows passes same_groups, the text's or the token ids').

    The sort puts a prompt group's rows (a pair's chosen and rejected) side by side; swapping
    the next group's row in between (a1 b1 a2 b2) keeps the cycle a derangement with fresh
    prompts, and the row swapped in is the nearest later one that fits, so lengths stay sorted
    almost everywhere. Where no later row fits (the cycle's end, where a large group's shortest
    rows may gather), an earlier one is swapped in if every pair it touches stays acceptable;
    the wrap (last → first) likewise.
    """
    n = len(order)
    if len(set(prompts)) == 1:
        return  # one prompt: no pair is acceptable, so no swap could be made (5 s for 100k rows)

    def acceptable(a: int, b: int) -> bool:  # may row a take row b's completion?
        return prompts[a] != prompts[b] and completions[a] != completions[b]

    def ok(k: int) -> bool:  # does order[k] → order[k+1] (cyclically) make an acceptable pair?
        return acceptable(order[k % n], order[(k + 1) % n])

    def swap_keeps(x: int, y: int, links: set[int]) -> bool:
        order[x], order[y] = order[y], order[x]
        if all(ok(j) for j in links):
            return True
        order[x], order[y] = order[y], order[x]
        return False

    for k in range(n - 1):
        if ok(k):
            continue
        later = next((m for m in range(k + 2, min(n, k + 2 + SPREAD_SCAN)) if acceptable(order[k], order[m])), None)
        if later is not None:
            order[k + 1], order[later] = order[later], order[k + 1]
            continue
        for m in range(k - 1, max(-1, k - 1 - SPREAD_SCAN), -1):
            if swap_keeps(m, k + 1, {m - 1, m, k, k + 1}):
                break
    if n > 3 and not ok(n - 1):
        for m in range(n - 2, max(0, n - 2 - SPREAD_SCAN), -1):
            if swap_keeps(m, n - 1, {m - 1, m, n - 2, n - 1}):
                break


def _steps_to_another_prompt(order: Sequence[int], prompts: Sequence[Hashable]) -> list[int]:
    """For each cycle position k, how many steps on (cyclically) the next row with a prompt other
    than order[k]'s lies; n where every row shares it."""
    n = len(order)
    differs = [prompts[order[k]] != prompts[order[(k + 1) % n]] for k in range(n)]
    if not any(differs):
        return [n] * n
    steps = [0] * n
    last = differs.index(True)  # a run's end: walking back from it, each position is one step further
    for back in range(n):
        k = (last - back) % n
        steps[k] = 1 if differs[k] else steps[(k + 1) % n] + 1
    return steps


def kl_partners(
    prompts: Sequence[Hashable],
    completions: Sequence[Hashable],
    ids: Sequence[str],
    seed: int,
    lengths: Sequence[int] | None = None,
    block_rows: int = BLOCK_ROWS,
) -> Pairing:
    """Pair every row with the next acceptable row on the cycle (see the module docstring).

    `lengths` (tokens of prompt + completion) sort the blocks; without them the cycle is the
    plain seeded shuffle."""
    n = len(prompts)
    if n < 2:
        raise InputError(f"KL pairing needs at least 2 rows, got {n}")
    order = cycle_order(lengths if lengths is not None else [0] * n, seed, block_rows, groups=prompts)
    _spread(order, prompts, completions)
    partner = [-1] * n
    same_prompt = 0
    other_prompt_in = _steps_to_another_prompt(order, prompts)
    for k, i in enumerate(order):
        fallback = None
        step = 1
        while step < n:
            j = order[(k + step) % n]
            if completions[j] == completions[i]:
                step += 1
                continue
            if prompts[j] != prompts[i]:
                partner[i] = j
                break
            if fallback is None:
                fallback = j
            if step >= MAX_SCAN:
                break
            # Every row up to the next other prompt shares row i's: none can be the partner, and
            # the fallback is taken. Jumping there (or to MAX_SCAN) picks the same partner as
            # stepping row by row, without 4096 steps a row where one prompt fills the cycle.
            step = max(step + 1, min(step + other_prompt_in[(k + step) % n], MAX_SCAN))
        if partner[i] == -1:
            if fallback is None:
                raise InputError(f"row {ids[i]}: no valid KL partner (every other row has the same completion)")
            partner[i] = fallback
            same_prompt += 1
    return Pairing(order, partner, same_prompt)


@dataclass(frozen=True)
class Truncation:
    """TRUNCATION_RULE with its limits; `bos_id` is `leading_bos_id(tokenizer)`. The prompt's
    half of the rule runs at tokenization (tokenize.py `prompt_must_be_cut`, `keep_end`), the
    completions' half here."""

    max_length: int
    max_prompt_length: int
    bos_id: int | None = None

    def kept_lengths(self, prompt_len, completion_len, kl_completion_len):
        """Tokens kept of the completion and the KL completion behind a prompt of `prompt_len`
        (as kept at tokenization): ints, or numpy arrays for many rows at once (the manifest's
        counts), by the same arithmetic `apply` cuts with."""
        room = self.max_length - np.asarray(prompt_len)
        return np.minimum(completion_len, room), np.minimum(kl_completion_len, room)

    def apply(self, prompt_ids: np.ndarray, completion_ids: np.ndarray, kl_completion_ids: np.ndarray) -> Truncated:
        """Cut one row's completion and KL completion behind its (already cut) prompt."""
        n_completion, n_kl = (int(n) for n in self.kept_lengths(len(prompt_ids), len(completion_ids), len(kl_completion_ids)))
        return Truncated(
            np.asarray(prompt_ids, np.int32),
            np.asarray(completion_ids[:n_completion], np.int32),
            np.asarray(kl_completion_ids[:n_kl], np.int32),
            completion_cut=n_completion < len(completion_ids),
            kl_completion_cut=n_kl < len(kl_completion_ids),
        )


@dataclass(frozen=True)
class Truncated:
    """One row's sequences after its completions were cut."""

    prompt_ids: np.ndarray
    completion_ids: np.ndarray
    kl_completion_ids: np.ndarray
    completion_cut: bool
    kl_completion_cut: bool


def shard_values(reader: ArrowFile, rows: np.ndarray, partners: np.ndarray, truncation: Truncation) -> dict[str, Any]:
    """The STAGE and PAIRING columns (formats/schema.py) of staged `rows`, each paired with the
    staged row `partners[i]`: its (already cut) prompt, its own completion and its partner's
    whole completion, both cut behind that prompt (`Truncation.kept_lengths`, for all rows at
    once). Score adds the SCORE columns."""
    values = reader.rows(rows, [c.name for c in S.columns_of(S.Phase.STAGE)] + ["prompt_cut", WHOLE_COMPLETION])
    partner = reader.rows(partners, [S.ID, WHOLE_COMPLETION])
    completion, kl, prompt_cut = values.pop(WHOLE_COMPLETION), partner[WHOLE_COMPLETION], values.pop("prompt_cut")
    keep, keep_kl = truncation.kept_lengths(values[S.PROMPT_IDS].lengths, completion.lengths, kl.lengths)
    return {
        **values,
        S.COMPLETION_IDS: S.heads(completion, keep),
        S.KL_SOURCE_ID: partner[S.ID],
        S.KL_COMPLETION_IDS: S.heads(kl, keep_kl),
        S.TRUNCATED: (prompt_cut != 0) | (keep < completion.lengths),
    }
