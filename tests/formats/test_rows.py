"""The one random-access reader of Arrow rows (formats/cache.py `gather_rows`, `ArrowFile`) and
the one list builder (formats/schema.py `to_arrow`): the cache's shards and precompute's
staging file are read, and every list column is built, by the same code."""

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from kto.formats import schema as S
from kto.formats.cache import ArrowFile
from kto.formats.errors import InputError

TYPES = {"ids": pa.list_(pa.int32()), "name": pa.string(), "score": pa.float64(), "flag": pa.bool_()}


def batch(start: int, n: int) -> pa.RecordBatch:
    rows = range(start, start + n)
    return pa.record_batch(
        [
            pa.array([list(range(i, i + i % 4)) for i in rows], TYPES["ids"]),  # some rows empty
            pa.array([f"row-{i}" for i in rows], TYPES["name"]),
            pa.array([i / 8 for i in rows], TYPES["score"]),
            pa.array([i % 3 == 0 for i in rows], TYPES["flag"]),
        ],
        schema=pa.schema(TYPES.items()),
    )


def test_arrow_file_gathers_rows_across_record_batches_in_any_order(tmp_path):
    path = tmp_path / "rows.arrow"
    batches = [batch(0, 5), batch(5, 1), batch(6, 7)]
    with ipc.new_file(str(path), batches[0].schema) as writer:
        for b in batches:
            writer.write_batch(b)
    indices = np.array([12, 0, 5, 5, 3, 7, 0])  # across the three batches, repeats, out of order
    expected = pa.Table.from_batches(batches).take(pa.array(indices)).to_pydict()
    with ArrowFile(path) as reader:
        assert reader.num_rows == 13
        got = reader.rows(indices, list(TYPES))
        empty = reader.rows(np.zeros(0, np.int64), ["ids", "score"])
    assert [x.tolist() for x in got["ids"].to_list()] == expected["ids"]
    assert got["ids"].values.dtype == np.int32
    assert got["name"] == expected["name"]
    assert got["score"].dtype == np.float64 and got["score"].tolist() == expected["score"]
    assert got["flag"].dtype == bool and got["flag"].tolist() == expected["flag"]
    assert len(empty["ids"]) == 0 and len(empty["score"]) == 0


def test_to_arrow_builds_what_pyarrow_builds_from_python_lists():
    rows = [[3, 4, 5], [], [6], [7, 8]]
    expected = pa.array(rows, pa.list_(pa.int32()))
    from_arrays = S.to_arrow([np.array(r, np.int64) for r in rows], pa.list_(pa.int32()))
    assert from_arrays.equals(expected) and from_arrays.offsets.type == pa.int32()
    # A Ragged whose rows start past its values' first element (a gather's view) is packed first.
    r = S.Ragged(np.array([9, 3, 4, 5, 6, 7, 8, 9], np.int32), np.array([1, 4, 4, 5, 7]))
    assert S.to_arrow(r, pa.list_(pa.int32())).equals(expected)
    logps = S.to_arrow([np.array([-0.5, -1.25])], pa.list_(pa.float32()))
    assert logps.type == pa.list_(pa.float32()) and logps.to_pylist() == [[-0.5, -1.25]]
    assert S.to_arrow(None, pa.list_(pa.float32()), 3).to_pylist() == [None, None, None]


def test_heads_keep_each_rows_start():
    rows = [[3, 4, 5], [], [6], [7, 8, 9, 10]]
    r = S.Ragged(np.array([0, *sum(rows, [])], np.int32), np.array([1, 4, 4, 5, 9]))  # rows start at 1
    keep = np.array([2, 0, 1, 0])
    got = S.heads(r, keep)
    assert [x.tolist() for x in got.to_list()] == [row[:k] for row, k in zip(rows, keep)]
    assert got.offsets[0] == 0 and len(got.values) == keep.sum() and got.values.dtype == np.int32


def test_a_list_column_past_int32_offsets_is_refused_not_wrapped():
    """2**31 values in one column: the int32 cast of its offsets wrapped, and a column of another
    row's tokens would have been written; refused when the shard is built, naming the flag that
    makes shards smaller. (A zero-stride view: no 8 GB are allocated.)"""
    big = S.Ragged(np.broadcast_to(np.int32(0), (2**31,)), np.array([0, 2**31]))
    with pytest.raises(
        InputError, match=r"^2,147,483,648 tokens in one column of a shard: .* give a smaller --rows-per-shard \(with --overwrite: it lays the shards out\)$"
    ):
        S.to_arrow(big, pa.list_(pa.int32()))
