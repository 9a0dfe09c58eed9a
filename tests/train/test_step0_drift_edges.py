"""The step-0 check sees a drift of either sign, and refuses a small real one in fp32: a
reference cache whose per-token log-probs are all 0.01 off (another checkpoint, other kernels)
stops kto-train before its first update, naming the drift and the fp32 tolerance."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import patch_shard_table, run_train, train_error_line, unverified_copy

from kto.train.checks import drift_of


def fake_batch(cached: list[np.ndarray | None], valid: list[bool]) -> SimpleNamespace:
    """What drift_of reads of a micro-batch: the score mask's row lengths, the cached terms, validity."""
    width = max(len(c) if c is not None else 1 for c in cached)
    mask = torch.zeros(len(cached), width, dtype=torch.bool)
    for i, c in enumerate(cached):
        mask[i, : len(c) if c is not None else 1] = True
    policy = SimpleNamespace(score_mask=mask)
    return SimpleNamespace(policy=policy, ref_token_logps=cached, valid=torch.tensor(valid))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_drift_of_sees_a_drift_of_either_sign(sign):
    cached = [np.array([-3.0, -2.0, -4.0], dtype=np.float32), np.array([-1.0, -5.0], dtype=np.float32)]
    ours = torch.tensor([-3.0, -2.0, -4.0, -1.0, -5.0 + sign * 0.25])
    drift = drift_of(ours, fake_batch(cached, [True, True]))
    assert drift.max_abs == pytest.approx(0.25) and drift.tokens == 5


def test_drift_of_skips_invalid_rows_and_rows_without_terms():
    cached = [np.array([-3.0], dtype=np.float32), None, np.array([-1.0, -2.0], dtype=np.float32)]
    ours = torch.tensor([-3.0 - 0.5, -9.0, -1.0 + 7.0, -2.0])  # row 1 has no terms, row 2 is filler
    drift = drift_of(ours, fake_batch(cached, [True, True, False]))
    assert drift.max_abs == pytest.approx(0.5) and drift.tokens == 1


def shifted_cache(tiny_cache, dest, shift: float):
    """A copy of tiny_cache with every ref_token_logps term (and each row's ref_logp, their sum)
    moved by `shift`, the sha256s patched into the manifest, the fingerprint tags kept."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.ipc as ipc

    from kto.formats import schema as S
    from kto.formats.manifest import read_manifest

    cache = unverified_copy(tiny_cache, dest)
    for k, entry in enumerate(read_manifest(cache).shards):
        table = ipc.open_file(pa.memory_map(str(cache / entry.name))).read_all()
        terms = table.column(S.REF_TOKEN_LOGPS).combine_chunks()
        assert pc.max(terms.flatten()).as_py() < -2 * abs(shift)  # still log-probs after the shift
        moved = pa.ListArray.from_arrays(terms.offsets, pc.add(terms.flatten(), shift).cast(terms.type.value_type))
        counts = pc.list_value_length(terms).cast(pa.float64())
        ref = pc.add(table.column(S.REF_LOGP), pc.multiply(counts, shift))
        table = table.set_column(table.schema.get_field_index(S.REF_TOKEN_LOGPS), table.schema.field(S.REF_TOKEN_LOGPS), moved)
        table = table.set_column(table.schema.get_field_index(S.REF_LOGP), table.schema.field(S.REF_LOGP), ref)
        patch_shard_table(cache, k, table)
    return cache


def test_the_untouched_cache_passes_the_fp32_check(tiny_cache, tiny_model_dir, tmp_path):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--batch-size", "2", "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    assert "(tolerance 0.001; " in result.output


@pytest.mark.parametrize("shift", [-0.01, 0.01])
def test_a_small_real_drift_is_refused_at_step_0_in_fp32(tiny_cache, tiny_model_dir, tmp_path, shift):
    """Cached terms 0.01 below the model's (a positive drift) or above (a negative one)."""
    cache = shifted_cache(tiny_cache, tmp_path / "cache", shift)
    out = tmp_path / "r"
    result = run_train(cache, tiny_model_dir, out, "--max-steps", "1", "--batch-size", "2", "--dtype", "fp32")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert "step-0 log-probs differ from the cache by up to 0.01 per token (tolerance 0.001)" in line, line
    assert not (out / "final").exists()
