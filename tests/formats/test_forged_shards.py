"""Shards rewritten with pyarrow, their schema metadata kept and their sha256 patched into the
manifest, so the checksum passes: the cache reader kto-train uses (formats/cache.py) refuses
each with one line naming the shard (and the row), before --out is touched. They used to end
in an ArrowIndexError traceback (list offsets past the values), a numpy ValueError in
train/data.py (offsets that go down), a broadcast error at the step-0 check (one per-token
log-prob too few) or to train silently (one too many; a shard from another cache)."""

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from conftest import patch_shard_table, run_train, train_error_line, unverified_copy

from kto.formats import schema as S
from kto.formats.cache import open_cache
from kto.formats.errors import InputError
from kto.formats.shards import FINGERPRINT_TAG

SHARD = 1


@pytest.fixture
def cache_copy(tiny_cache, tmp_path):
    return unverified_copy(tiny_cache, tmp_path / "cache")


def mapped(cache, k: int = SHARD) -> pa.Table:
    return ipc.open_file(pa.memory_map(str(cache / f"shard-{k:05d}.arrow"))).read_all()


def forge_offsets(cache, name: str, edit) -> pa.Table:
    """Shard SHARD with `edit(offsets)` applied to column `name`'s int32 offsets in place after
    the table is built (pyarrow validates offsets when an array or table is made, not when
    it is written), written back with its metadata and its sha256 patched into the manifest."""
    table = mapped(cache)
    column = table.column(name).combine_chunks()
    offsets = column.offsets.to_numpy().copy()
    forged = pa.Array.from_buffers(column.type, len(column), [column.buffers()[0], pa.py_buffer(offsets)], children=[column.values])
    table = table.set_column(table.schema.get_field_index(name), name, forged)
    edit(offsets)
    patch_shard_table(cache, SHARD, table)
    return table


def refusal(cache, read) -> str:
    """The InputError `read(open_cache(cache))` raises: one line, naming the shard."""
    with pytest.raises(InputError) as exc:
        read(open_cache(cache))
    line = str(exc.value)
    assert "\n" not in line and f"{cache / f'shard-{SHARD:05d}.arrow'}" in line, line
    return line


def past_the_values(offsets: np.ndarray) -> None:
    offsets[-1] += 3


def going_down(offsets: np.ndarray) -> None:
    offsets[2] = offsets[3] + 5  # row 2 longer, row 3 of negative length


@pytest.mark.parametrize("read", [lambda c: c.lengths(), lambda c: c.table(SHARD), lambda c: c.read_shard(SHARD, values=False)])
def test_offsets_past_the_values_are_one_line_naming_the_row(cache_copy, read):
    rows = forge_offsets(cache_copy, S.COMPLETION_IDS, past_the_values).num_rows
    line = refusal(cache_copy, read)
    assert f"row {rows} " in line and S.COMPLETION_IDS in line and "past" in line, line


@pytest.mark.parametrize("read", [lambda c: c.lengths(), lambda c: c.table(SHARD)])
def test_offsets_that_go_down_are_one_line_naming_the_row(cache_copy, read):
    forge_offsets(cache_copy, S.PROMPT_IDS, going_down)
    line = refusal(cache_copy, read)
    assert "row 3 " in line and S.PROMPT_IDS in line, line


def test_kto_train_refuses_offsets_that_go_down_before_out(cache_copy, tiny_model_dir, tmp_path):
    """It used to pass `kto-inspect verify`'s reading and crash in train/data.py prompt_keys."""
    forge_offsets(cache_copy, S.PROMPT_IDS, going_down)
    result = run_train(cache_copy, tiny_model_dir, tmp_path / "r", "--max-steps", "1")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert f"{cache_copy / 'shard-00001.arrow'} row 3" in line and S.PROMPT_IDS in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name, edit", [(S.COMPLETION_IDS, past_the_values), (S.PROMPT_IDS, going_down)])
def test_kto_inspect_verify_names_the_unsound_offsets(cache_copy, name, edit):
    """verify used to end in an ArrowIndexError (past the values) or pass (going down)."""
    from kto.inspection.verify import verify

    forge_offsets(cache_copy, name, edit)
    problems = verify(cache_copy, check_tokenizer=False)[0].problems
    assert any(f"{cache_copy / 'shard-00001.arrow'} row " in p and name in p for p in problems), problems


def drop_or_add_a_term(cache, terms: str, delta: int) -> None:
    """Row 2 of shard SHARD gets one per-token term fewer (delta -1) or more (+1): valid Arrow."""
    table = mapped(cache)
    values = table.column(terms).to_pylist()
    assert values[1], f"{terms} is not stored in the tiny cache"
    values[1] = values[1][:-1] if delta < 0 else values[1] + [-0.5]
    column = pa.array(values, table.schema.field(terms).type)
    patch_shard_table(cache, SHARD, table.set_column(table.schema.get_field_index(terms), terms, column))


@pytest.mark.parametrize("delta", [-1, 1])
@pytest.mark.parametrize("terms, ids", [(S.REF_TOKEN_LOGPS, S.COMPLETION_IDS), (S.REF_KL_TOKEN_LOGPS, S.KL_COMPLETION_IDS)])
def test_per_token_terms_not_one_per_token_are_one_line(cache_copy, terms, ids, delta):
    drop_or_add_a_term(cache_copy, terms, delta)
    n_ids = len(mapped(cache_copy).column(ids)[1].as_py())
    line = refusal(cache_copy, lambda c: c.table(SHARD))
    assert "row 2 (id " in line and f"{n_ids + delta} {terms} for {n_ids} {ids}" in line, line
    # kto-inspect verify says it once, through the same check (it had its own twin of it)
    from kto.inspection.verify import verify

    problems = verify(cache_copy, check_tokenizer=False)[0].problems
    said = [p for p in problems if f"{n_ids + delta} {terms} for {n_ids} {ids}" in p]
    assert len(said) == 1 and line.startswith(said[0]), problems


def retag(cache, fingerprint: str) -> None:
    """Shard SHARD as another cache's: its rows, another fingerprint tag, its sha256 patched."""
    table = mapped(cache)
    patch_shard_table(cache, SHARD, table.replace_schema_metadata({**table.schema.metadata, FINGERPRINT_TAG.encode(): fingerprint.encode()}))


@pytest.mark.parametrize("read", [lambda c: c.lengths(), lambda c: c.open_shard(SHARD), lambda c: c.table(SHARD)])
def test_a_shard_of_another_cache_is_one_line_with_both_fingerprints(cache_copy, read):
    ours = open_cache(cache_copy).manifest.fingerprint
    retag(cache_copy, "f" * 64)
    line = refusal(cache_copy, read)
    assert "f" * 16 in line and ours[:16] in line and "f" * 17 not in line, line


def test_kto_train_refuses_a_shard_of_another_seed_before_out(cache_copy, tiny_model_dir, tmp_path):
    from click.testing import CliRunner
    from conftest import chat_rows, precompute_args, write_rows

    from kto.precompute.cli import main

    other = tmp_path / "other"
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    made = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, other, "--seed", "1"), catch_exceptions=False)
    assert made.exit_code == 0, made.output
    assert open_cache(other).manifest.fingerprint != open_cache(cache_copy).manifest.fingerprint
    patch_shard_table(cache_copy, SHARD, mapped(other))
    result = run_train(cache_copy, tiny_model_dir, tmp_path / "r", "--max-steps", "1")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert f"{cache_copy / 'shard-00001.arrow'}: was made for fingerprint" in line, line
    assert not (tmp_path / "r").exists()
