"""Every line of metrics.jsonl carries the same keys in the same order (formats/metrics_line.py).

Found by a hunt: eval lines lacked lr, grad_norm, memory …, so a run logging its first train
line after 100 eval lines (`--log-every 120 --eval-every 1`) was read by polars' default
`read_ndjson` with 14 of its 24 columns, silently."""

from __future__ import annotations

import json

import polars as pl
import pytest

from kto.formats.metrics_line import KL_KEYS, TRAIN_ONLY_KEYS, metrics_keys
from kto.train.metrics import MetricsWriter, metric_values

# What evaluate() returns (no train-only keys) and what log_window writes, as a run gives them.
EVAL = {"loss": 0.5, "kto_loss": 0.5, "sft_loss": 10.8, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0}
EVAL |= {"logps/chosen": -165.5, "logps/rejected": -137.8, "count/chosen": 6.0, "count/rejected": 4.0, "kl": 0.0, "kl_raw": 0.0}
TRAIN = {**EVAL, "padding/policy": 0.017, "tokens/saved": 122.6, "padding/kl": 0.0156, "lr": 9.4e-05, "grad_norm": 0.77}
TRAIN |= {"epoch": 12.0, "tokens_per_s": 14216.8, "peak_memory_gb": 0.5, "rss_anon_gb": 0.5, "rss_file_gb": 0.17}


class Trackers:
    """Stands in for the Accelerator: records what MetricsWriter sends to the trackers."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, values: dict, step: int) -> None:
        self.logged.append((step, values))


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_first_train_line_after_a_hundred_eval_lines_is_not_dropped_by_polars(tmp_path):
    path, trackers = tmp_path / "metrics.jsonl", Trackers()
    writer = MetricsWriter(path, trackers)
    for step in range(1, 121):
        writer.write(step, EVAL, split="eval")
    writer.write(120, TRAIN)
    writer.close()
    written = lines(path)
    assert all(list(rec) == list(metrics_keys(True)) for rec in written) and len(metrics_keys(True)) == 26
    assert written[0]["lr"] is None and written[0]["rss_file_gb"] is None and written[-1]["lr"] == 9.4e-05
    # polars' default window (100 lines) now fails loudly instead of reading 14 columns …
    with pytest.raises(pl.exceptions.ComputeError, match="NULL-typed column"):
        pl.read_ndjson(path)
    # … and README's call reads every column.
    read = pl.read_ndjson(path, infer_schema_length=None)
    assert read.columns == list(metrics_keys(True)) and read["lr"].to_list() == [None] * 120 + [9.4e-05]
    # No null reaches a tracker: an eval line sends its own 12 metrics, prefixed.
    assert trackers.logged[0] == (1, {f"eval/{k}": v for k, v in EVAL.items()})
    assert trackers.logged[-1] == (120, TRAIN)


def test_a_loss_without_kl_term_writes_no_kl_key_on_any_line(tmp_path):
    """`kl` absent means no KL term; null would read as a KL that was not finite."""
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path, Trackers(), has_kl=False)
    no_kl = {k: v for k, v in TRAIN.items() if k not in KL_KEYS}
    writer.write(1, {k: v for k, v in EVAL.items() if k not in KL_KEYS}, split="eval")
    writer.write(1, no_kl)
    with pytest.raises(ValueError, match=r"\['kl'\] are not in"):
        writer.write(2, {**no_kl, "kl": 0.1})
    writer.close()
    assert [list(rec) for rec in lines(path)] == [list(metrics_keys(False))] * 2 and len(metrics_keys(False)) == 23


def test_a_resume_gives_lines_an_older_version_wrote_every_key(tmp_path):
    """Old sparse lines kept by a resume's truncation are completed, so the file stays uniform;
    a key this version does not know is kept, after the others."""
    path = tmp_path / "metrics.jsonl"
    old = [{"step": 1, "split": "eval", "loss": 0.5}, {"step": 2, "split": "train", "loss": 0.4, "old_key": 1.0}, {"step": 3, "split": "train", "loss": 0.3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    writer = MetricsWriter(path, Trackers(), resume_step=2)
    writer.write(3, {"loss": 0.25})
    writer.close()
    got = lines(path)
    assert [list(r) for r in got] == [list(metrics_keys(True)), [*metrics_keys(True), "old_key"], list(metrics_keys(True))]
    assert [(r["step"], r["loss"], r["lr"]) for r in got] == [(1, 0.5, None), (2, 0.4, None), (3, 0.25, None)]


def test_an_eval_lines_values_leave_out_the_train_only_keys():
    """train_kto's eval_metrics (and the model card) hold what they held before: no `lr: None`."""
    eval_line = {"step": 4, "split": "eval", **dict.fromkeys(TRAIN_ONLY_KEYS), "loss": 0.5, "rewards/rejected": None}
    assert metric_values(eval_line) == {"loss": 0.5, "rewards/rejected": None}
    assert metric_values({"step": 4, "split": "train", "loss": 0.5, "lr": None}) == {"loss": 0.5, "lr": None}
