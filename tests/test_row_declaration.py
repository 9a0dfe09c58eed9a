"""The row is declared once (formats/schema.py `COLUMNS`): a column added there, filled by one
producer and read by one consumer, goes from kto-precompute's staging to kto-train's loss with
no other file touched (docs/design.md, "Adding a column")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import metrics, precompute_args, run_train

from kto.formats import schema as S
from kto.formats.cache import open_cache
from kto.precompute import pipeline
from kto.precompute.cli import main as precompute
from kto.precompute.inputs.examples import ColumnMap
from kto.precompute.tokenize import TokenizedRow, tokenize_example
from kto.train import step
from kto.train.data import collate_micro_batch, per_row_columns

# 1. The declaration: a float per row, filled at tokenization, read by training.
WEIGHT = S.Column("weight", pa.float64(), S.Phase.STAGE, True, "the row's weight in the loss")


# 2. Where it is computed: the tokenized row carries it (an attribute of the column's name).
@dataclasses.dataclass(frozen=True)
class WeightedRow(TokenizedRow):
    weight: float = 1.0


def weight_of(completion_len: int) -> float:
    return completion_len / 8


def weighted_tokenize(example, *args, **kwargs):
    row = tokenize_example(example, *args, **kwargs)
    if row is None:
        return None
    return WeightedRow(**{f.name: getattr(row, f.name) for f in dataclasses.fields(row)}, weight=weight_of(len(row.completion_ids)))


# 3. Where it is used: each row's loss times its weight (train/step.py `policy_pass`).
def weighted_pass(original):
    def policy_pass(model, b, s, z):
        p = original(model, b, s, z)
        return dataclasses.replace(p, out=dataclasses.replace(p.out, losses=p.out.losses * b.columns[WEIGHT.name]))

    return policy_pass


def test_a_declared_column_goes_from_tokenization_to_the_loss(monkeypatch, tmp_path, tiny_model_dir, text_data):
    monkeypatch.setattr(S, "COLUMNS", (*S.COLUMNS, WEIGHT))
    monkeypatch.setattr(S, "SHARD_SCHEMA", S.shard_schema())
    monkeypatch.setattr(pipeline, "tokenize_example", weighted_tokenize)
    monkeypatch.setattr(step, "policy_pass", weighted_pass(step.policy_pass))
    result = CliRunner().invoke(precompute, precompute_args(text_data, tiny_model_dir, tmp_path / "cache"), catch_exceptions=False)
    assert result.exit_code == 0, result.output

    cache = open_cache(tmp_path / "cache")
    rows = cache.rows(np.arange(cache.num_rows), [WEIGHT.name, S.COMPLETION_IDS, S.TRUNCATED])
    assert cache.table(0).schema.field(WEIGHT.name).type == pa.float64()
    assert not rows[S.TRUNCATED].any()  # so the stored completion is the tokenized one
    expected = np.array([weight_of(len(c)) for c in rows[S.COMPLETION_IDS].to_list()])
    np.testing.assert_array_equal(rows[WEIGHT.name], expected)
    assert np.ptp(expected) > 0 and abs(expected.mean() - 1) > 0.1  # the weights can change the loss

    batch = collate_micro_batch(cache, np.arange(cache.num_rows), pad_id=0)
    assert WEIGHT.name in per_row_columns() and batch.columns[WEIGHT.name].dtype.is_floating_point

    # One step over every row, the policy still the reference: r = 0 and z = 0, so each row's
    # loss is weight · (1 − σ(0)) = weight / 2, and the step's loss their mean.
    result = run_train(tmp_path / "cache", tiny_model_dir, tmp_path / "run", "--batch-size", str(cache.num_rows), "--max-steps", "1", "--log-every", "1")
    assert result.exit_code == 0, result.output
    assert metrics(tmp_path / "run")[0]["loss"] == pytest.approx(0.5 * expected.mean(), rel=1e-12)


def test_the_shard_schema_is_the_declaration():
    assert S.SHARD_SCHEMA == S.shard_schema()
    assert [(f.name, f.type, f.nullable) for f in S.SHARD_SCHEMA] == [(c.name, c.type, c.nullable) for c in S.COLUMNS]
    assert {c.phase for c in S.COLUMNS} == set(S.Phase)
    assert per_row_columns() == (S.LABEL, S.REF_LOGP, S.REF_KL_LOGP)


def test_a_new_column_map_field_at_its_default_keeps_every_fingerprint():
    """A weight read from an input column needs a ColumnMap field; the mapping is fingerprinted,
    so a field added at its default must leave the fingerprints of existing caches alone."""
    today = {"prompt": "prompt", "completion": "completion", "label": "label", "messages": "messages", "chosen": "chosen", "rejected": "rejected", "id": "id"}
    assert ColumnMap().as_dict() == today
    assert ColumnMap(prompt="question").as_dict() == {**today, "prompt": "question"}
    extended = dataclasses.make_dataclass("Extended", [("weight", str, dataclasses.field(default="weight"))], bases=(ColumnMap,), frozen=True)
    assert extended().as_dict() == today
    assert extended(weight="score").as_dict() == {**today, "weight": "score"}
