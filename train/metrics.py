"""metrics.jsonl (one JSON object per line, appended and flushed) plus accelerate trackers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from kto.formats.atomic import disk_full_names, free_name, write_bytes_atomic
from kto.formats.errors import log
from kto.formats.metrics_line import EVAL_ONLY_KEYS, TRAIN_ONLY_KEYS, complete_line, metrics_keys
from kto.formats.runrecord import METRICS_NAME, resumed_metrics_name

if TYPE_CHECKING:
    from accelerate import Accelerator


def _step_of(line: str) -> int | None:
    """The step of a metrics line, or None for a blank or half-written one (a crash mid-write)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deeply
        return None


def last_metrics(run_dir: Path) -> tuple[dict | None, dict | None]:
    """The last `train` and the last `eval` record of RUN/metrics.jsonl (None where there is none).

    Every line is flushed as it is written, so the main process may read it before closing it,
    and every rank after `train` returns (the main process closes it first)."""
    path = Path(run_dir) / METRICS_NAME
    last: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            last[record.get("split", "train")] = record
    return last.get("train"), last.get("eval")


def set_aside_past(path: Path, step: int, keys: list[str], say: Callable[[str], None]) -> None:
    """A resume from `step`: metrics.jsonl keeps its lines up to `step`, and the lines past it
    (the steps the resumed run does again, and their evals: after `--resume checkpoint-K` the
    only record of the continuation it abandons) go to metrics.after-step-STEP.superseded.jsonl
    as they were, or .superseded.1.jsonl, .2 … where that name is taken (formats/runrecord.py
    RESUMED_METRICS_RE). The copy is written whole before metrics.jsonl is cut: a
    crash between the two leaves every line in metrics.jsonl still, and the next resume copies
    them again, to the next free name (two copies, no line lost). A half-written last line (a
    crash mid-write) is no line of either."""
    lines = path.read_text().splitlines()
    past = [line for line in lines if (s := _step_of(line)) is not None and s > step]
    if past:
        aside = free_name(path.with_name(resumed_metrics_name(step)), lambda n: resumed_metrics_name(step, n))
        write_bytes_atomic(aside, "".join(line + "\n" for line in past).encode())
        say(f"--resume: moved the {len(past)} metrics lines past step {step} to {aside.name}")
    kept = [line for line in lines if (s := _step_of(line)) is not None and s <= step]
    if kept:
        # Lines an older version wrote held only their own keys: given the full set too.
        kept = [json.dumps(complete_line(json.loads(line), keys, strict=False)) for line in kept]
        write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())
    else:  # every line was past the resumed step: the uninterrupted run had written none yet
        path.unlink()


def metric_values(record: dict | None) -> dict:
    """A metrics record without its step and split: the metrics themselves. An eval line's
    train-only keys (lr, memory, …: null there by design) are left out, as they always were,
    and so is a train line's eval-only `eval_cache` (an eval line keeps it: its eval cache's name)."""
    record = record or {}
    skip = ("step", "split", *(TRAIN_ONLY_KEYS if record.get("split") == "eval" else EVAL_ONLY_KEYS))
    return {k: v for k, v in record.items() if k not in skip}


class MetricsWriter:
    """Main process only. On resume, lines past the resumed step are moved first to
    metrics.after-step-STEP.superseded.jsonl (set_aside_past), so the file reads as one uninterrupted run.

    The file is opened at the first line, not at set-up: an empty metrics.jsonl is refused by
    the README's own reader (polars: "Cannot infer NDJSON types on empty reader") for as long
    as the run takes to its first --log-every step. So it holds whole lines or does not exist."""

    def __init__(self, path: Path, accelerator: Accelerator, resume_step: int | None = None, has_kl: bool = True):
        self.path = path
        self.accelerator = accelerator
        self.file: TextIO | None = None
        # Every line carries these keys, in this order (formats/metrics_line.py says why).
        self.keys = metrics_keys(has_kl)
        if resume_step is not None and path.is_file():
            set_aside_past(path, resume_step, self.keys, log)  # main process only: no accelerator asked

    def write(self, step: int, metrics: dict[str, float | str], split: str = "train") -> None:
        record = {"step": step, "split": split, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        with disk_full_names(self.path):
            if self.file is None:
                self.file = open(self.path, "a")
            self.file.write(json.dumps(complete_line(record, self.keys)) + "\n")
            self.file.flush()
        prefix = "" if split == "train" else f"{split}/"
        # A value that does not exist (rewards/rejected on a step without undesirable rows, an
        # eval line's lr) is null in the file and left out of the trackers: a gap in the chart,
        # not a NaN point.
        finite = {prefix + k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.accelerator.log(finite, step=step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def close_after_failure(metrics: MetricsWriter | None, accelerator: Accelerator) -> None:
    """A run raised (a NaN, the step-0 check, a second Ctrl-C, a full disk): metrics.jsonl is
    closed, keeping every line written, and this process's trackers are ended (TensorBoard's
    writer thread ran on for the rest of a notebook's process). On this process alone: no
    collective such as wait_for_everyone, which would hang where only this rank failed. A
    failure to close is logged, not raised: the run's own exception is the one the caller sees."""
    closers = ([metrics.close] if metrics else []) + [tracker.finish for tracker in accelerator.trackers]
    for close in closers:
        try:
            close()
        except Exception as exc:  # the run's own exception is on its way out
            log(f"warning: closing the run's records after it failed: {type(exc).__name__}: {exc}")
