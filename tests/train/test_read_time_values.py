"""Values no shard may hold, planted in a shard whose sha256 and fingerprint tag still agree with
the manifest (as a forged or hand-edited cache would): kto-train stops when it reads the shard,
with one line naming the shard, the row and its id and the value, and writes no final model. It
must not go on to a nameless `the loss is nan` (a NaN reference) or an index error deep inside
the embedding (a token id past the vocabulary)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from conftest import patch_shard_table, train_error_line, unverified_copy
from test_loop import train_cli

from kto.formats import schema as S

SHARD = 1  # not the first shard


def read(cache, k: int) -> pa.Table:
    return ipc.open_file(pa.memory_map(str(cache / f"shard-{k:05d}.arrow"))).read_all()


def with_column(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), table.schema.field(name), column)


def nan_ref_logp(table: pa.Table, vocab_size: int) -> tuple[pa.Table, str]:
    values = table.column(S.REF_LOGP).to_pylist()
    values[1] = float("nan")
    return with_column(table, S.REF_LOGP, pa.array(values, pa.float64())), "ref_logp is nan"


def token_past_vocabulary(table: pa.Table, vocab_size: int) -> tuple[pa.Table, str]:
    column = table.column(S.COMPLETION_IDS).combine_chunks()
    offsets = np.asarray(column.offsets)
    flat = np.asarray(column.values).copy()
    flat[offsets[1] + 1] = vocab_size  # row 2's second completion token
    moved = pa.ListArray.from_arrays(column.offsets, pa.array(flat, column.type.value_type))
    limit = f"ids must lie in [0, {vocab_size}), the cache tokenizer's vocabulary"
    return with_column(table, S.COMPLETION_IDS, moved), f"completion_ids holds token id {vocab_size} at position 2; {limit}"


@pytest.mark.parametrize("plant", [nan_ref_logp, token_past_vocabulary])
def test_a_bad_value_in_a_shard_stops_kto_train_naming_its_row(tiny_cache, tiny_model_dir, tmp_path, plant):
    from kto.formats.cache import open_cache

    cache = unverified_copy(tiny_cache, tmp_path / "cache")
    vocab_size = open_cache(cache).vocab_size()
    assert vocab_size is not None
    table = read(cache, SHARD)
    row_id = table.column(S.ID)[1].as_py()
    planted, what = plant(table, vocab_size)
    path = patch_shard_table(cache, SHARD, planted)
    out = tmp_path / "r"
    result = train_cli(cache, tiny_model_dir, out, "--max-steps", "8")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert f"{path} row 2 (id {row_id!r}): {what}" in line, line
    assert "the loss is" not in result.output
    assert not (out / "final").exists()
