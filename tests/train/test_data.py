import dataclasses

import numpy as np
import pytest

from kto.formats.shards import ShardVerifier
from kto.train import cli
from kto.train.checks import class_balance
from kto.train.config import TrainConfig
from kto.train.data import BatchShape, ShardedCache, collate, epoch_plan, steps_per_epoch


@pytest.mark.parametrize("n, batch, accum, world", [(16, 4, 1, 1), (17, 2, 2, 2), (5, 3, 1, 2), (100, 4, 3, 1)])
def test_epoch_plan_covers_every_row_once_and_ranks_run_equal_steps(n, batch, accum, world):
    lengths = np.random.default_rng(0).integers(10, 500, n)
    shape = BatchShape(batch, accum, world)
    plan = epoch_plan(lengths, shape, seed=3, epoch=0)
    assert plan.shape == (steps_per_epoch(n, shape), world, accum, batch)
    rows = plan[plan >= 0]
    assert sorted(rows.tolist()) == list(range(n))  # nothing dropped, nothing twice
    assert np.array_equal(plan, epoch_plan(lengths, shape, seed=3, epoch=0))
    if n > shape.rows_per_step:
        assert not np.array_equal(plan, epoch_plan(lengths, shape, seed=3, epoch=1))


def test_length_grouping_keeps_padding_low():
    lengths = np.random.default_rng(1).integers(32, 2048, 4096)
    plan = epoch_plan(lengths, BatchShape(8, 1, 1), seed=0, epoch=0)
    micro = plan.reshape(-1, 8)
    padded = sum(len(m) * lengths[m].max() for m in micro)
    assert 1 - lengths.sum() / padded < 0.10


def test_filler_rows_are_invalid(tiny_cache, tokenizer_dir):
    cache = ShardedCache(tiny_cache)
    batch = collate(cache, np.array([3, -1]), pad_id=0)
    assert batch.valid.tolist() == [True, False]
    assert batch.policy.input_ids.shape[0] == 2


def test_cli_options_mirror_config_fields():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {p.name for p in cli.main.params} - {"config_file"}
    assert options == fields


def test_shards_are_hashed_once_then_trusted_until_modified(tiny_cache, monkeypatch):
    import kto.formats.shards as shards

    cache = ShardedCache(tiny_cache)
    cache.table(0)  # first read: hashed (or already recorded by an earlier test)
    calls = []
    monkeypatch.setattr(shards, "sha256_file", lambda p: calls.append(p) or "x")
    ShardVerifier(tiny_cache, cache.manifest.shard_sha256).verify(cache.manifest.shards[0].name)
    assert calls == []


def test_tampered_shard_is_refused(tiny_cache, tmp_path):
    from conftest import tampered_copy

    cache = ShardedCache(tampered_copy(tiny_cache, tmp_path / "cache"))
    cache.table(0)
    with pytest.raises(ValueError, match="shard-00001.arrow: sha256"):
        cache.table(1)


def test_class_balance_suggestion():
    b = class_balance(n_d=100, n_u=300, w_d=1.0, w_u=1.0)
    assert b.ratio == pytest.approx(1 / 3) and not b.ok
    assert b.suggested_desirable_weight == pytest.approx(3.0)  # (3·100)/(1·300) = 1
    b = class_balance(n_d=300, n_u=100, w_d=1.0, w_u=1.0)
    assert b.suggested_desirable_weight == pytest.approx(4 / 9)  # (4/9·300)/100 = 4/3
    assert class_balance(120, 100, 1.0, 1.0).ok


def test_rows_come_back_in_the_requested_order_across_shards(tiny_cache):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    cache = ShardedCache(tiny_cache)
    every = pa.concat_tables(
        [ipc.open_file(pa.memory_map(str(tiny_cache / s.name))).read_all() for s in cache.manifest.shards]
    ).column("id").to_pylist()
    wanted = [15, 0, 7, 7, 3, 12]  # four shards of 5, 5, 5, 1 rows; a repeat included
    assert cache.rows(wanted)["id"] == [every[i] for i in wanted]
