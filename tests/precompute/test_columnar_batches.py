"""A Parquet input's rows become Python objects a few thousand at a time: a row group is one
record batch (131,072 rows as pyarrow writes it), and converting it whole held 239 MB of Python
objects for 200k chat rows (tracemalloc's peak; 10 MB now), much of it still held while scoring."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kto.precompute.inputs.records import ROWS_PER_BATCH, _table_rows


def test_a_large_row_group_is_read_a_batch_at_a_time():
    n = 20_000
    rows = [{"messages": [{"role": "user", "content": f"q{i} " * 10}, {"role": "assistant", "content": "a " * 30}], "label": i % 2 == 0} for i in range(n)]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    table = pq.read_table(pa.BufferReader(buffer.getvalue()))
    assert table.to_batches()[0].num_rows == n  # one row group: one batch of every row
    assert list(_table_rows(Path("rows.parquet"), table)) == rows
    tracemalloc.start()
    try:
        for _ in _table_rows(Path("rows.parquet"), table):  # read as staging reads: one row at a time, none kept
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A row's Python objects take about 1.2 KB: the whole row group was 24 MB, a batch is 5 MB.
    assert peak < 2 * ROWS_PER_BATCH * 1200, peak
