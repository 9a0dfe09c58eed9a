import dataclasses

import numpy as np
import pytest
import torch

from kto.formats.cache import open_cache
from kto.formats.shards import ShardVerifier
from kto.train import cli
from kto.train.checks import class_balance
from kto.train.config import TrainConfig
from kto.train.data import MicroBatchShape, collate_micro_batch, epoch_plan, fill_bins, group_segments, prompt_groups, prompt_units, step_units, steps_per_epoch


@pytest.mark.parametrize("n, batch, accum, world", [(16, 4, 1, 1), (17, 2, 2, 2), (5, 3, 1, 2), (100, 4, 3, 1)])
def test_epoch_plan_covers_every_row_once_and_ranks_run_equal_steps(n, batch, accum, world):
    lengths = np.random.default_rng(0).integers(10, 500, n)
    shape = MicroBatchShape(batch, accum, world)
    plan = epoch_plan(lengths, shape, seed=3, epoch=0)
    assert plan.shape == (steps_per_epoch(n, shape), world, accum, batch)
    rows = plan[plan >= 0]
    assert sorted(rows.tolist()) == list(range(n))  # nothing dropped, nothing twice
    assert np.array_equal(plan, epoch_plan(lengths, shape, seed=3, epoch=0))
    if n > shape.rows_per_step:
        assert not np.array_equal(plan, epoch_plan(lengths, shape, seed=3, epoch=1))


def cycle_lengths(n: int, seed: int = 1) -> np.ndarray:
    """Lengths of a 32-2048-token mix in the order kto-precompute stores rows (its KL cycle)."""
    from kto.precompute.plan import cycle_order

    lengths = np.random.default_rng(seed).integers(32, 2048, n)
    return lengths[cycle_order(lengths.tolist(), seed=0)]


def test_length_grouping_keeps_padding_low():
    lengths = cycle_lengths(4096)
    plan = epoch_plan(lengths, MicroBatchShape(8, 1, 1), seed=0, epoch=0)
    micro = plan.reshape(-1, 8)
    padded = sum(len(m) * lengths[m].max() for m in micro)
    assert 1 - lengths.sum() / padded < 0.01


@pytest.mark.parametrize("batch, accum, world", [(4, 1, 1), (2, 2, 1), (2, 1, 2), (3, 2, 2)])
def test_a_step_is_a_contiguous_segment_of_the_cycle(batch, accum, world):
    """Row k's KL partner is row k+1 (mod n): all of a step's partners but one are in the step,
    and the step's rows do not depend on the split into ranks × accumulation × batch."""
    n = 50
    shape = MicroBatchShape(batch, accum, world)
    G = shape.rows_per_step
    lengths = cycle_lengths(n)
    for epoch in (0, 1):
        plan = epoch_plan(lengths, shape, seed=5, epoch=epoch)
        for step in plan:
            rows = set(step[step >= 0].tolist())
            first = next(r for r in rows if (r - 1) % n not in rows)  # where the segment starts
            assert rows == {(first + k) % n for k in range(len(rows))}
            assert sum((r + 1) % n in rows for r in rows) == len(rows) - 1
        same_split = epoch_plan(lengths, MicroBatchShape(G, 1, 1), seed=5, epoch=epoch)
        assert [set(s[s >= 0].tolist()) for s in plan] == [set(s[s >= 0].tolist()) for s in same_split]
    # Shuffled across epochs: the segments start elsewhere and run in another order.
    a, b = (epoch_plan(lengths, shape, seed=5, epoch=e) for e in (0, 1))
    assert [set(s.ravel()) for s in a] != [set(s.ravel()) for s in b]


def paired_groups(n: int, seed: int) -> np.ndarray:
    """[n] prompt group per row, as `prompt_groups` numbers them (a group's first row): pairs, a
    few single rows (a pair that lost a row), one group of 9 (larger than any micro-batch here),
    each group's rows a few places apart, as kto-precompute's cycle leaves them."""
    rng = np.random.default_rng(seed)
    sizes = [9]
    while sum(sizes) < n:
        sizes.append(min(int(rng.choice([1, 2, 2, 2, 2, 2, 2])), n - sum(sizes)))
    rng.shuffle(sizes)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    labels = labels[np.argsort(np.arange(n) + rng.integers(0, 4, n), kind="stable")]  # spread a little
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return first[inverse]


@pytest.mark.parametrize("batch, accum, world", [(4, 1, 1), (8, 1, 1), (2, 2, 1), (4, 2, 2), (2, 1, 3), (8, 4, 1), (3, 2, 2)])
def test_epoch_plan_keeps_each_prompt_group_in_one_micro_batch(batch, accum, world):
    """Paired data: every group that fits a micro-batch lands in one, every row once per epoch,
    the same plan for the same seed and epoch, and a step's rows independent of the split into
    ranks × accumulation × batch (the gradient-equality tests compare such splits). An odd
    batch size fills a micro-batch beside pairs only with single rows, so there pairs may split
    where none is left; the other properties hold."""
    n = 61
    shape = MicroBatchShape(batch, accum, world)
    lengths = cycle_lengths(n)
    groups = paired_groups(n, seed=batch * 10 + accum + world)
    members = {g: set(np.flatnonzero(groups == g).tolist()) for g in np.unique(groups).tolist()}
    assert sum(len(m) == 2 for m in members.values()) > 15 and max(len(m) for m in members.values()) == 9
    for epoch in (0, 1):
        plan = epoch_plan(lengths, shape, seed=5, epoch=epoch, groups=groups)
        assert plan.shape == (steps_per_epoch(n, shape), world, accum, batch)
        assert sorted(plan[plan >= 0].tolist()) == list(range(n))
        assert np.array_equal(plan, epoch_plan(lengths, shape, seed=5, epoch=epoch, groups=groups))
        micro = [set(m[m >= 0].tolist()) for m in plan.reshape(-1, batch)]
        for rows in members.values():
            holding = [m for m in micro if m & rows]
            if len(rows) <= batch and batch % 2 == 0:
                assert len(holding) == 1, (sorted(rows), holding)
            else:
                assert len(holding) <= -(-len(rows) // batch) + 1
        same_split = epoch_plan(lengths, MicroBatchShape(shape.rows_per_step, 1, 1), seed=5, epoch=epoch, groups=groups)
        assert [set(s[s >= 0].tolist()) for s in plan] == [set(s[s >= 0].tolist()) for s in same_split]
    assert not np.array_equal(plan, epoch_plan(lengths, shape, seed=5, epoch=0, groups=groups))
    assert not np.array_equal(plan, epoch_plan(lengths, shape, seed=6, epoch=1, groups=groups))


@pytest.mark.parametrize("batch, accum, world", [(4, 1, 1), (2, 2, 1), (3, 2, 2)])
def test_unpaired_rows_keep_the_row_plan(batch, accum, world):
    """No two rows share a prompt: the plan is the one without groups, slot for slot, so
    unpaired data trains on exactly the batches it did before prompt groups were planned."""
    n = 50
    shape, lengths = MicroBatchShape(batch, accum, world), cycle_lengths(n)
    for epoch in (0, 1):
        plain = epoch_plan(lengths, shape, seed=5, epoch=epoch)
        assert np.array_equal(epoch_plan(lengths, shape, seed=5, epoch=epoch, groups=np.arange(n)), plain)
        # The grouped path itself (which the plan skips for distinct groups) gives it too.
        rng = np.random.default_rng([5, epoch])
        cycle = (np.arange(n) + int(rng.integers(n))) % n
        units = step_units(prompt_units(cycle, np.arange(n)), cycle, shape.rows_per_step)
        grouped = group_segments(units, lengths, steps_per_epoch(n, shape), shape, np.arange(n))
        order = rng.permutation(len(grouped))
        as_plan = grouped.reshape(len(grouped), accum, world, batch).transpose(0, 2, 1, 3)[order]
        assert np.array_equal(as_plan, plain)


def test_fill_bins_keeps_units_whole_where_they_fit():
    """Bins of 4 from units of 3, 2, 2, 1, 3, 6 rows, at most 5 bins (17 rows: no room to
    spare): [3 + 1], [2 + 2], [3, then 1 of the 6], [4 of the 6], [the last 1]: the 1 moves ahead
    into the first bin's room; the 6 rows cannot fit a bin and fill the room left."""
    units = [[0, 1, 2], [3, 4], [5, 6], [7], [8, 9, 10], [11, 12, 13, 14, 15, 16]]
    assert fill_bins(units, 4, 5) == [[[0, 1, 2], [7]], [[3, 4], [5, 6]], [[8, 9, 10], [11]], [[12, 13, 14, 15]], [[16]]]
    # 4 rows last instead of 6, in at most 4 bins (one slot to spare): after [3] the 4 do not fit
    # the room of 1 and nothing else is left, but the last bin holds them: the slot stays empty.
    units[-1] = [11, 12, 13, 14]
    assert fill_bins(units, 4, 4) == [[[0, 1, 2], [7]], [[3, 4], [5, 6]], [[8, 9, 10]], [[11, 12, 13, 14]]]


def test_fill_bins_breaks_a_joined_unit_into_its_groups_before_splitting_rows():
    """Bins of 4, no room to spare. [0, 1, 2] leaves a room of 1; the joined unit [3..6] (two
    pairs) does not fit it, nor does anything in reach whole, but [9, 10, 11]'s part [11] does:
    that unit is broken up and [11] fills the room. Then [3..6] fits a bin whole, and [9, 10]
    with [7, 8] fill the last: no prompt group is cut by rows."""
    units = [[0, 1, 2], [3, 4, 5, 6], [7, 8], [9, 10, 11]]
    parts = [[[0, 1, 2]], [[3, 4], [5, 6]], [[7, 8]], [[9, 10], [11]]]
    assert fill_bins(units, 4, 3, parts=parts) == [[[0, 1, 2], [11]], [[3, 4, 5, 6]], [[7, 8], [9, 10]]]
    # Without parts the units are cut by rows: [3] and [4] leave their pair, [7] and [8] theirs.
    assert fill_bins(units, 4, 3) == [[[0, 1, 2], [3]], [[4, 5, 6], [7]], [[8], [9, 10, 11]]]


def test_fill_bins_breaks_the_next_unit_into_its_groups_when_nothing_fits():
    """Bins of 4, at most 3, 12 rows: no room to spare. After [0, 1, 2] the room of 1 fits no
    unit and no part; the joined unit [3..6] is broken into its pairs, and the first of them is
    cut by rows ([3] here, [4] in the next bin) rather than the whole joined unit."""
    units = [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10, 11]]
    parts = [[[0, 1, 2]], [[3, 4], [5, 6]], [[7, 8, 9, 10, 11]]]
    assert fill_bins(units, 4, 3, parts=parts) == [[[0, 1, 2], [3]], [[4], [5, 6], [7]], [[8, 9, 10, 11]]]
    assert fill_bins(units, 4, 3) == [[[0, 1, 2], [3]], [[4, 5, 6], [7]], [[8, 9, 10, 11]]]
    with pytest.raises(ValueError, match="parts must hold each unit's rows"):
        fill_bins(units, 4, 3, parts=parts[:2])


def test_step_units_join_the_groups_the_kl_chain_weaves_together():
    """kto-precompute's cycle for four pairs a, b, c, d: a1 b1 a2 b2 c1 d1 c2 d2 (rows 0-7), row
    r's partner r + 1. Between a and b three links cross, between b and c one: a and b form one
    unit, c and d another, so a step of 4 rows holds 3 of its rows' partners (not 1 of 4, as a
    step of b and c would). A step of 2 rows joins nothing. A link between units far apart (a
    group the shift cut in two) decides nothing."""
    groups = np.array([0, 1, 0, 1, 2, 3, 2, 3])
    cycle = np.arange(8)
    units = prompt_units(cycle, groups)
    assert units == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert step_units(units, cycle, 4) == [[[0, 2], [1, 3]], [[4, 6], [5, 7]]]
    assert step_units(units, cycle, 2) == [[[0, 2]], [[1, 3]], [[4, 6]], [[5, 7]]]
    # The epoch starts at row 3 (b2): b gathers at the front with b1 from the far end; its far
    # link does not join b with c, and c, d still pair up.
    shifted = (np.arange(8) + 3) % 8
    units = prompt_units(shifted, groups)
    assert units == [[3, 1], [4, 6], [5, 7], [0, 2]]
    assert step_units(units, shifted, 4) == [[[3, 1]], [[4, 6], [5, 7]], [[0, 2]]]


def test_prompt_groups_number_rows_by_their_prompt_ids(tiny_cache):
    """tiny_cache holds 8 questions, each with a desirable and an undesirable row: 8 groups of
    2, numbered by each group's first row, equal exactly where the prompt ids are."""
    cache = open_cache(tiny_cache)
    groups = prompt_groups(cache)
    prompts = [bytes(np.asarray(p, dtype=np.int32)) for p in cache.rows(np.arange(cache.num_rows), ("prompt_ids",))["prompt_ids"].to_list()]
    assert len(groups) == 16 and sorted(np.bincount(groups)[np.unique(groups)].tolist()) == [2] * 8
    for i in range(16):
        assert groups[i] == prompts.index(prompts[i])


def test_filler_rows_are_invalid(tiny_cache, tokenizer_dir):
    cache = open_cache(tiny_cache)
    batch = collate_micro_batch(cache, np.array([3, -1]), pad_id=0)
    assert batch.valid.tolist() == [True, False]
    assert batch.policy.input_ids.shape[0] == 2


def test_cli_options_mirror_config_fields():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {p.name for p in cli.main.params if p.expose_value} - {"config_file"}
    assert options == fields


def test_shards_are_hashed_once_then_trusted_until_modified(tiny_cache, monkeypatch):
    import kto.formats.shards as shards

    cache = open_cache(tiny_cache)
    cache.table(0)  # first read: hashed (or already recorded by an earlier test)
    calls = []
    monkeypatch.setattr(shards, "sha256_file", lambda p: calls.append(p) or "x")
    ShardVerifier(tiny_cache, cache.manifest.shard_sha256).verify(cache.manifest.shards[0].name)
    assert calls == []


def test_tampered_shard_is_refused(tiny_cache, tmp_path):
    from conftest import tampered_copy

    cache = open_cache(tampered_copy(tiny_cache, tmp_path / "cache"))
    cache.table(0)
    with pytest.raises(ValueError, match="shard-00001.arrow: sha256"):
        cache.table(1)


def test_a_shard_changed_in_place_with_its_mtime_put_back_is_hashed_again(tiny_cache, tmp_path):
    """Seen in an attack: a byte changed after a first run had stamped the shard, its mtime
    restored with os.utime; the next run trained on it. The stamp now holds the ctime and inode."""
    import os

    from conftest import unverified_copy

    cache_dir = unverified_copy(tiny_cache, tmp_path / "cache")
    open_cache(cache_dir).table(1)  # hashed and stamped
    path = cache_dir / "shard-00001.arrow"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    with pytest.raises(ValueError, match="shard-00001.arrow: sha256"):
        open_cache(cache_dir).table(1)


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

    cache = open_cache(tiny_cache)
    every = pa.concat_tables([ipc.open_file(pa.memory_map(str(tiny_cache / s.name))).read_all() for s in cache.manifest.shards]).column("id").to_pylist()
    wanted = [15, 0, 7, 7, 3, 12]  # four shards of 5, 5, 5, 1 rows; a repeat included
    assert cache.rows(wanted)["id"] == [every[i] for i in wanted]


def _old_path():
    """The pre-zero-copy collate (to_pylist, then Python lists), kept verbatim in the benchmark."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import bench_collate

    return bench_collate


@pytest.mark.parametrize("with_token_logps", [False, True])
def test_zero_copy_collate_equals_the_old_path(tiny_cache, with_token_logps):
    """Same tensors, same dtypes, for batches that span all four shards (5, 5, 5, 1 rows), repeat
    a row, start with filler, end with filler, or are all filler."""
    bench = _old_path()
    cache = open_cache(tiny_cache)
    cases = [[15, 0, 7, 7, 3, 12], [-1, 4, 5, -1], [9, 10, 14, 15], [15], [-1, -1], list(range(16))]
    for idx in cases:
        idx = np.array(idx)
        new = collate_micro_batch(cache, idx, pad_id=2, with_token_logps=with_token_logps)
        old = bench.old_collate(cache, idx, pad_id=2, with_token_logps=with_token_logps)
        assert bench.batches_equal(new, old), idx
        assert new.policy.input_ids.dtype == old.policy.input_ids.dtype == torch.int64
    if with_token_logps:
        assert all(x is not None and x.dtype == np.float32 for x in new.ref_token_logps)


def test_ragged_take_many_and_nulls():
    import pyarrow as pa

    from kto.formats import schema as S

    arr = pa.array([[1, 2], None, [], [3, 4, 5], [6]], pa.list_(pa.int32()))
    r = S.from_arrow(pa.chunked_array([arr]))
    assert r.valid.tolist() == [True, False, True, True, True]
    got = S.take(r, np.array([3, 0, 3, 1, 4]))
    assert [None if x is None else x.tolist() for x in got.to_list()] == [[3, 4, 5], [1, 2], [3, 4, 5], None, [6]]
    sliced = S.from_arrow(arr.slice(3, 2))  # offsets honour the slice, values do not
    assert [x.tolist() for x in S.take(sliced, np.array([1, 0])).to_list()] == [[6], [3, 4, 5]]
    both = S.take_many([r, sliced], np.array([1, 0, 1, 0]), np.array([0, 1, 1, 3]))  # interleaved sources
    assert [None if x is None else x.tolist() for x in both.to_list()] == [[3, 4, 5], None, [6], [3, 4, 5]]
    assert both.offsets.tolist() == [0, 3, 3, 4, 7] and both.values.dtype == np.int32


def test_make_token_batch_from_lists_and_ragged_agree():
    from kto.formats.compute.logprob import make_token_batch
    from kto.formats.schema import Ragged

    prompts, completions = [[5, 6], [7], [8, 9, 10]], [[1], [2, 3, 4], []]
    a = make_token_batch(prompts, completions, pad_id=0)
    b = make_token_batch(Ragged.from_rows(prompts), Ragged.from_rows(completions), pad_id=0)
    assert a.input_ids.tolist() == [[5, 6, 1, 0], [7, 2, 3, 4], [8, 9, 10, 0]]
    assert a.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert a.score_mask.tolist() == [[False, False, True, False], [False, True, True, True], [False] * 4]
    assert all(torch.equal(x, y) for x, y in zip((a.input_ids, a.attention_mask, a.score_mask), (b.input_ids, b.attention_mask, b.score_mask)))
    with pytest.raises(ValueError, match="at least one prompt token"):
        make_token_batch([[1], []], [[2], [3]], pad_id=0)


def test_prefetcher_makes_each_key_once_in_order_and_reraises():
    import threading

    from kto.train.data import Prefetcher

    made, threads = [], set()

    def make(k):
        made.append(k)
        threads.add(threading.current_thread().name)
        if k == 3:
            raise ValueError("bad shard")
        return k * 10

    p = Prefetcher(make)
    assert p.get(0, 1) == 0 and p.get(1, 2) == 10 and p.get(2, 3) == 20
    with pytest.raises(ValueError, match="bad shard"):
        p.get(3, None)  # the worker's error surfaces in the caller, at the step that needs it
    assert p.get(5, None) == 50  # a key that was not prefetched is made on the spot
    p.close()
    assert made == [0, 1, 2, 3, 5]
    assert any(name.startswith("kto-prefetch") for name in threads)


def test_tokenizer_check_is_remembered_per_tokenizer_files(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    import kto.formats.compute.tokenizer_check as tokenizer_check
    from kto.formats.compute.sources import resolve_source
    from kto.formats.errors import InputError
    from kto.formats.manifest import read_manifest

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    (cache / tokenizer_check.TOKENIZER_CHECK_NAME).unlink(missing_ok=True)
    identity = read_manifest(cache).content.tokenizer
    source = resolve_source(str(tiny_model_dir))
    pad_id, tok = tokenizer_check.check_cache_tokenizer(source, identity, "m", cache)  # loaded, compared, recorded
    assert tok is not None and pad_id == tok.pad_token_id
    monkeypatch.setattr(tokenizer_check, "load_tokenizer", lambda *a, **k: pytest.fail("loaded again"))
    assert tokenizer_check.check_cache_tokenizer(source, identity, "m", cache) == (pad_id, None)  # same files: remembered
    monkeypatch.undo()
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    (other / "chat_template.jinja").write_text((other / "chat_template.jinja").read_text() + " ")
    with pytest.raises(InputError, match="chat template is not the one the cache.s prompts were rendered with"):
        tokenizer_check.check_cache_tokenizer(resolve_source(str(other)), identity, "m", cache)
