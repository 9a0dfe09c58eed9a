"""fill_bins on prompt groups larger than a bin: the plan is the one the algorithm before the fix
gave (kept below as the reference), and splitting a group by rows copies each row once rather
than the rest of the group at every bin (quadratic: 33 s of kto-train planning for one prompt
over 500k rows)."""

from __future__ import annotations

import numpy as np
import pytest

from kto.train.data import FILL_SCAN, fill_bins


def reference_fill_bins(units: list[list[int]], capacity: int, most: int, parts: list[list[list[int]]] | None = None) -> list[list[list[int]]]:
    """fill_bins as it was before groups were split by a start offset (a copy of the rest)."""
    breakable = [p if parts is not None and len(p) > 1 else None for p in (parts or units)]
    pending, left = list(zip(units, breakable))[::-1], sum(len(u) for u in units)
    bins: list[list[list[int]]] = []
    current: list[list[int]] = []
    room = capacity

    def break_up(k: int) -> None:
        pending[k : k + 1] = [(p, None) for p in pending[k][1][::-1]]

    while pending:
        last = len(pending) - 1
        window = range(last, max(last - FILL_SCAN, -1), -1)
        fits = next((k for k in window if len(pending[k][0]) <= room), None)
        if fits is None:
            part_fits = next((k for k in window if pending[k][1] and min(map(len, pending[k][1])) <= room), None)
            if part_fits is not None:
                break_up(part_fits)
                continue
            if len(pending[-1][0]) <= capacity and left <= (most - len(bins) - 1) * capacity:
                room = 0
            elif pending[-1][1] is not None:
                break_up(last)
                continue
        if room > 0:
            piece = pending.pop(last if fits is None else fits)[0]
            if len(piece) > room:
                piece, rest = piece[:room], piece[room:]
                pending.append((rest, None))
            current.append(piece)
            room, left = room - len(piece), left - len(piece)
        if room == 0:
            bins.append(current)
            current, room = [], capacity
    return bins + [current] if current else bins


def random_units(rng: np.random.Generator, n_groups: int, big: int) -> list[list[list[int]]]:
    """Units of one to three prompt groups, rows numbered in order; about one group in five
    has up to `big` rows, the rest 1 to 6."""
    sizes = [int(rng.integers(1, big)) if rng.random() < 0.2 else int(rng.integers(1, 7)) for _ in range(n_groups)]
    groups, row = [], 0
    for size in sizes:
        groups.append(list(range(row, row + size)))
        row += size
    units, g = [], 0
    while g < len(groups):
        k = int(rng.integers(1, 4))
        units.append(groups[g : g + k])
        g += k
    return units


@pytest.mark.parametrize("seed", range(40))
def test_plan_equals_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = random_units(rng, int(rng.integers(1, 120)), big=int(rng.choice([8, 60, 400])))
    units = [[r for group in unit for r in group] for unit in parts]
    capacity = int(rng.choice([1, 3, 8, 16, 64]))
    rows = sum(map(len, units))
    most = -(-rows // capacity) + int(rng.integers(0, 4))
    expected = reference_fill_bins(units, capacity, most, parts=parts)
    assert fill_bins(units, capacity, most, parts=parts) == expected
    assert fill_bins(units, capacity, most) == reference_fill_bins(units, capacity, most)
    assert sorted(r for b in expected for piece in b for r in piece) == list(range(rows))


class CountedList(list):
    """A list that counts the elements its slices copy (slices are CountedLists too)."""

    copied = 0

    def __getitem__(self, index: int | slice) -> object:
        got = super().__getitem__(index)
        if isinstance(index, slice):
            CountedList.copied += len(got)
            return CountedList(got)
        return got


def test_one_large_group_is_copied_once() -> None:
    """One prompt over 20,000 rows in bins of 8: each row is copied into its piece once. The
    copy of the rest at every bin copied 25 million rows (n² / 2·capacity)."""
    n, capacity = 20_000, 8
    CountedList.copied = 0
    bins = fill_bins([CountedList(range(n))], capacity, n // capacity)
    assert CountedList.copied <= n
    assert [list(b[0]) for b in bins] == [list(range(a, a + capacity)) for a in range(0, n, capacity)]
    assert reference_fill_bins([list(range(n))], capacity, n // capacity) == [[list(range(a, a + capacity))] for a in range(0, n, capacity)]
