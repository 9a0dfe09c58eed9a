"""The one unique-id check (precompute/inputs/examples.py), used on read_examples' lists (keys:
the ids) and on the staged rows (keys: 64-bit hashes of the ids)."""

from __future__ import annotations

import numpy as np
import pytest

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import check_unique_ids


def check(keys, ids, sources=None):
    sources = sources or [f"f.jsonl: row {i + 1}" for i in range(len(ids))]
    check_unique_ids(np.asarray(keys), lambda i: ids[i], lambda i: sources[i])


def test_a_repeat_behind_a_hash_collision_is_found():
    """Three rows share one 64-bit key: ids a, b, a. The two a's are not neighbours in key
    order (b sits between them), yet they are one id repeated."""
    with pytest.raises(InputError, match=r"^duplicate id 'a': f.jsonl: row 1 and f.jsonl: row 3; ids come from the id column: --id-column '' reads none"):
        check(np.array([7, 7, 7], dtype=np.uint64), ["a", "b", "a"])


def test_a_collision_alone_is_not_a_duplicate():
    check(np.array([7, 7, 3], dtype=np.uint64), ["a", "b", "c"])


def test_the_earliest_repeat_in_row_order_is_reported():
    """x, y, y, x: a reader going row by row meets the second y (row 3) before the second x."""
    ids = ["x", "y", "y", "x"]
    with pytest.raises(InputError, match=r"^duplicate id 'y': f.jsonl: row 2 and f.jsonl: row 3; "):
        check(np.array(ids, dtype=object), ids)


def test_one_source_twice_gets_the_hint():
    ids = ["d.jsonl:1", "d.jsonl:1"]
    with pytest.raises(InputError, match="two input files share this name"):
        check(np.array(ids, dtype=object), ids, ["d.jsonl: row 1", "d.jsonl: row 1"])


def test_unique_ids_pass():
    check(np.array([], dtype=np.uint64), [])
    check(np.array(["a", "b"], dtype=object), ["a", "b"])
