"""--eval-fraction: which rows are held out as OUT/eval/, stratified by label and grouped by prompt.

Two rules, both pure functions of the rows' labels and prompt keys and the seed:
- **by label**: the eval split holds round(f · n_D) desirable and round(f · n_U) undesirable rows
  (not round(f · n) rows of whatever the shuffle gives), and when both labels exist each label
  with at least 2 rows gets at least one eval row and keeps at least one training row, so a small
  set no longer gets an all-desirable eval split. The total stays round(f · n): when the
  at-least-one rule pushes the two targets past it, the larger one gives way.
- **by prompt group**: rows with the same prompt (a pair's chosen and rejected rows, or several
  answers to one question) land on one side together, so the eval split never scores a prompt
  that training has seen. Groups are visited in a seeded shuffle and a group is taken whole when
  it fits both label targets; a group that would overshoot one is skipped. Large groups can
  therefore leave the eval split short of its targets; the log line says what it holds.

Tiny sets: round(f · n) < 2 is refused (each split needs at least 2 rows, as before); a label
with a single row stays in training, and the log says the eval split lacks it.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from kto.formats.errors import InputError

EVAL_SPLIT_RULE = "stratified by label; rows sharing a prompt on one side; seeded shuffle of prompt groups, each taken whole when it fits both label targets"
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
    targets = eval_targets(sum(map(bool, labels)), n - sum(map(bool, labels)), fraction)
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    order = list(members.values())  # first-appearance order, then a seeded shuffle
    random.Random(f"eval-{seed}").shuffle(order)
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
