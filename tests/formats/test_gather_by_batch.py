"""Random-access reads of a file of many record batches (precompute's staging file), where a
shard's rows come from every batch in shuffled order: the values are the rows asked for, in the
order asked, and the work per batch is that of the rows taken from it (the file's batches are
read once, and no mask over every row is built per batch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from kto.formats import cache
from kto.formats import schema as S
from kto.formats.cache import ArrowFile

ROWS, BATCH = 600, 16  # 38 record batches


def write_file(path: Path) -> pa.Table:
    rng = np.random.default_rng(0)
    tokens = [None if i % 17 == 5 else rng.integers(0, 1000, int(rng.integers(0, 9))).astype(np.int32) for i in range(ROWS)]
    table = pa.table(
        {
            "id": [f"row{i}" for i in range(ROWS)],
            "label": rng.random(ROWS) < 0.5,
            "prompt_ids": pa.array(tokens, pa.list_(pa.int32())),
            "prompt_cut": pa.array(rng.integers(0, 3, ROWS).astype(np.int8)),
            "ref_logp": rng.normal(size=ROWS),
        }
    )
    with ipc.new_file(str(path), table.schema) as writer:
        for a in range(0, ROWS, BATCH):
            writer.write_table(table.slice(a, BATCH))
    return table


def as_lists(value: S.Ragged | np.ndarray | list) -> list:
    if isinstance(value, S.Ragged):
        return [None if row is None else row.tolist() for row in value.to_list()]
    return value.tolist() if isinstance(value, np.ndarray) else value


@pytest.mark.parametrize("seed", range(3))
def test_rows_are_the_rows_asked_for_in_order(tmp_path: Path, seed: int) -> None:
    table = write_file(tmp_path / "staged.arrow")
    rng = np.random.default_rng(seed)
    indices = np.concatenate([rng.permutation(ROWS)[:400], rng.integers(0, ROWS, 50)])  # shuffled, with repeats
    with ArrowFile(tmp_path / "staged.arrow") as reader:
        assert reader.num_rows == ROWS
        got = reader.rows(indices, table.column_names)
    expected = table.take(pa.array(indices)).to_pydict()
    for name in table.column_names:
        assert as_lists(got[name]) == expected[name], name
    assert got["prompt_ids"].valid is not None and not got["prompt_ids"].valid[indices % 17 == 5].any()


def test_each_record_batch_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a batch's metadata once per column as well (5 columns) read it 6 times."""
    table = write_file(tmp_path / "staged.arrow")
    reads: list[int] = []

    class Counted:
        def __init__(self, reader: ipc.RecordBatchFileReader):
            self.reader = reader
            self.num_record_batches = reader.num_record_batches

        def get_batch(self, b: int) -> pa.RecordBatch:
            reads.append(b)
            return self.reader.get_batch(b)

    opened = ipc.open_file
    monkeypatch.setattr(cache.ipc, "open_file", lambda source: Counted(opened(source)))
    with ArrowFile(tmp_path / "staged.arrow") as reader:
        reader.rows(np.random.default_rng(0).permutation(ROWS), table.column_names)
    assert sorted(reads) == list(range(-(-ROWS // BATCH)))


class CountedComparisons(np.ndarray):
    """An index array that counts the elements its == compares."""

    compared = 0

    def __eq__(self, other: object) -> np.ndarray:  # type: ignore[override]
        CountedComparisons.compared += self.size
        return np.asarray(self) == other


def test_take_many_groups_rows_once() -> None:
    """Rows from 50 sources in shuffled order, some rows null: the rows asked for, and no
    comparison of every row's source per source (50 × 1000 with a mask per source)."""
    rng = np.random.default_rng(1)
    sources = [S.Ragged.from_rows([rng.integers(0, 99, int(rng.integers(0, 5))) for _ in range(30)], np.int32) for _ in range(50)]
    sources[7] = S.Ragged(sources[7].values, sources[7].offsets, np.arange(30) % 3 != 0)
    source_of, rows = rng.integers(0, 50, 1000), rng.integers(0, 30, 1000)
    CountedComparisons.compared = 0
    got = S.take_many(sources, source_of.view(CountedComparisons), rows)
    assert CountedComparisons.compared == 0
    expected = [None if sources[s].valid is not None and not sources[s].valid[r] else sources[s].to_list()[r].tolist() for s, r in zip(source_of, rows)]
    assert as_lists(got) == expected
    assert got.values.dtype == np.int32 and got.offsets[0] == 0 and got.offsets[-1] == len(got.values)


def test_take_many_one_source_and_none() -> None:
    r = S.Ragged.from_rows([[1, 2], [], [3, 4, 5]], np.int32)
    got = S.take_many([r], np.zeros(4, np.int64), np.array([2, 0, 2, 1]))
    assert as_lists(got) == [[3, 4, 5], [1, 2], [3, 4, 5], []]
    empty = S.take_many([r], np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert len(empty) == 0 and empty.offsets.tolist() == [0]


def test_a_row_past_the_last_source_is_an_index_error_not_garbage():
    """Grouping by source ignored a source past the last: a row index past the file's rows came
    back as uninitialised memory (np.empty) instead of the IndexError indexing it gave."""
    import numpy as np
    import pytest

    from kto.formats import schema as S

    with pytest.raises(IndexError):
        S.by_source(np.array([0, 2]), 2)
    with pytest.raises(IndexError):
        S.by_source(np.array([-1, 0]), 2)
    order, spans = S.by_source(np.array([1, 0, 1]), 2)
    assert order.tolist() == [1, 0, 2] and spans == {0: (0, 1), 1: (1, 3)}


def test_take_keeps_each_rows_own_null():
    """Rows [1.0], null, [3.0, 4.0] taken as 1, 0: null then [1.0]. A mutation that kept the
    source's null mask as it stood gave [], null (no column holds a few null rows today, so
    nothing else sees it)."""
    r = S.Ragged(np.array([1.0, 3.0, 4.0]), np.array([0, 1, 1, 3]), np.array([True, False, True]))
    rows = S.take(r, np.array([1, 0, 2])).to_list()
    assert rows[0] is None and rows[1].tolist() == [1.0] and rows[2].tolist() == [3.0, 4.0]
