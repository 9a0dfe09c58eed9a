"""Read a kto-train run's metrics.jsonl and answer the first questions about it.

Is the KL estimate stuck at 0? Did desirable rewards rise and undesirable ones fall? The
answers (`checks`) are plain sentences shared by the text output and report.html.

A crash can leave the last line half written (kto-train appends and flushes line by line), so
a line that does not parse is skipped with a warning that names it; only a file without a
single complete line is an error (said as what the file is, where it is a kto file of another
kind: a run record, an --eval-only result). Steps that go back (an older kto-train's resume
appended to the lines past its checkpoint; files joined by hand) are read once, from the later
lines, with a warning (`_Reader`).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

from kto.formats.compute.sharded import is_sharded_checkpoint
from kto.formats.errors import InputError
from kto.formats.metrics_line import EVAL_CACHE_KEY, EVAL_ONLY_KEYS, TRAIN_ONLY_KEYS, eval_cache_name
from kto.formats.runrecord import FINAL_DIR, METRICS_NAME, RUN_RECORD_NAME, checkpoint_dir, eval_cache_at_start, is_run_record, read_run_config, record_path

from .text import printable

# Metric -> the count that must be positive for it to mean anything. kto-train logs
# rewards/chosen = null (NaN) for a window without desirable rows, and such points are left out
# of plots and checks; older runs logged 0.0 there, which is left out the same way.
# (`chosen`/`rejected` mirror TRL's metric names; here they mean desirable/undesirable.)
NEEDS = {
    "sft_loss": ("count/chosen",),  # the NLL of desirable completions
    "rewards/chosen": ("count/chosen",),
    "logps/chosen": ("count/chosen",),
    "rewards/rejected": ("count/rejected",),
    "logps/rejected": ("count/rejected",),
    "rewards/margins": ("count/chosen", "count/rejected"),
}


@dataclass
class RunLog:
    path: Path
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def series(self, name: str, split: str = "train") -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, leaving out nulls and points that mean nothing."""
        records = self.eval if split == "eval" else self.train
        kept = [(rec["step"], v) for rec, v in zip(records, column(records, name)) if v is not None]
        return [step for step, _ in kept], [v for _, v in kept]


def column(records: list[dict], name: str) -> list[float | None]:
    """`name`'s value on each line, in one pass; None where a line has none: a null, a
    non-number, a non-finite number, or a class metric of a window without that class (NEEDS).
    The one place these rules live (RunLog.series, the plots); inlined, as it runs once per
    line and metric (a 200,000-line log: millions of times)."""
    needs, isfinite = NEEDS.get(name, ()), math.isfinite
    out: list[float | None] = []
    for rec in records:
        v = rec.get(name)
        # type(), not isinstance: bool is an int, and JSON gives exact ints and floats.
        ok = type(v) in (int, float) and isfinite(v) and (not needs or all(rec.get(c, 1) for c in needs))
        out.append(float(v) if ok else None)
    return out


def metrics_path(run: str | Path) -> Path:
    run = Path(run)
    return run / METRICS_NAME if run.is_dir() else run


# What `kto-train --eval-only --out OUT` writes (train/eval_only.py's EVAL_RESULTS; inspection/
# imports nothing of train/): one eval line, no steps.
EVAL_RESULTS_NAME = "eval_results.json"
# Steps that go back are said line by line up to this many times, then counted.
BACK_SAID = 5


def read_run(run: str | Path) -> RunLog:
    """Parse OUT/metrics.jsonl (or a metrics file given directly)."""
    path = metrics_path(run)
    if not Path(run).exists():
        raise InputError(f"{run}: no such run directory or metrics file")
    if not path.is_file():
        _refuse_no_metrics_file(Path(run), path)
    raw = path.read_bytes()
    reader = _Reader(RunLog(path))
    lines = raw.decode("utf-8", errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply
            if i == last and not raw.endswith(b"\n"):
                complete = sum(1 for line in lines[:i] if line.strip())
                reader.log.warnings.append(f"{path}: line {i + 1} is incomplete (the run was cut off mid-write?); using the {complete} complete lines")
            else:
                reader.log.warnings.append(f"{path}: line {i + 1} is not valid JSON; skipped")
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            reader.log.warnings.append(f"{path}: line {i + 1} has no integer 'step'; skipped")
            continue
        reader.add(rec, i + 1)
    log = reader.finish()
    if not (log.train or log.eval):
        what = _not_a_metrics_log(path, raw)
        if what:
            raise InputError(f"{path}: {what}")
        why = "it is empty" if not raw.strip() else "no line is a complete metrics record"
        raise InputError(f"{path}: no metrics to show ({why}); {_why_no_lines(path.parent)}")
    return log


@dataclass
class _Reader:
    """The lines of a metrics file, one list per split, with every step read once. Where a
    split's steps go back (a kto-train before resumes set their lines aside appended the resumed
    run's lines to the ones logged past its checkpoint; files joined by hand), the later lines
    stand for the repeated steps, as a resume means, and the earlier ones are left out with a
    warning: a train line at step S replaces the lines of both splits from S on, an eval line at
    S the eval lines from S on and the train lines after S (kto-train logs a step's train line
    before its eval line)."""

    log: RunLog
    backs: int = 0  # how many times steps went back
    dropped: int = 0  # earlier lines left out in all

    def add(self, rec: dict, line: int) -> None:
        step, is_eval = rec["step"], rec.get("split") == "eval"
        own = self.log.eval if is_eval else self.log.train
        if own and own[-1]["step"] >= step:
            before = own[-1]["step"]
            left_out = _drop_from(self.log.eval, step) + _drop_from(self.log.train, step + is_eval)
            self.backs, self.dropped = self.backs + 1, self.dropped + left_out
            if self.backs <= BACK_SAID:
                self.log.warnings.append(
                    f"{self.log.path}: steps go back at line {line} (step {step} after step {before}): a resumed run or joined files; "
                    f"the later lines are read for steps {step} on ({left_out} earlier line{'s' if left_out != 1 else ''} left out)"
                )
        own.append(rec)

    def finish(self) -> RunLog:
        if self.backs > BACK_SAID:
            self.log.warnings.append(f"{self.log.path}: steps go back at {self.backs - BACK_SAID} more lines ({self.dropped} earlier lines left out in all)")
        return self.log


def _drop_from(records: list[dict], step: int) -> int:
    """Remove the lines of `step` and later from the end of `records` (kept in step order)."""
    n = len(records)
    while records and records[-1]["step"] >= step:
        records.pop()
    return n - len(records)


def _refuse_no_metrics_file(run: Path, path: Path) -> NoReturn:
    """RUN has no metrics.jsonl: a run that has logged no step yet, an --eval-only --out folder
    (one eval result, no steps), or no run at all."""
    if run.is_dir() and record_path(run) is not None:  # a run, with no line logged yet
        raise InputError(f"{path}: no such file: the run has logged no step yet; {_why_no_lines(run)}")
    if run.is_dir() and (run / EVAL_RESULTS_NAME).is_file():
        raise InputError(
            f"{run}: a kto-train --eval-only --out folder, not a run: its result is {run / EVAL_RESULTS_NAME} (read it as JSON); it has no metrics log to plot"
        )
    raise InputError(f"{path}: no such file; is {run} a kto-train --out directory? (metrics.jsonl appears at the first --log-every step)")


def _not_a_metrics_log(path: Path, raw: bytes) -> str | None:
    """What a file without a single metrics line is, where it is a kto file of another kind: a
    run record (kto_run.json), or a kto-train --eval-only result (eval_results.json, or its
    --json line saved). None otherwise."""
    if is_run_record(path):
        run = path.parent
        if path.name != RUN_RECORD_NAME:  # a copy: its folder is not the run's
            return "a kto-train run record (kto_run.json), not a metrics log; give its run directory"
        return f"the run record of {run}, not its metrics log; give the run directory: kto-inspect run {shlex.quote(str(run))}"
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: not JSON, or not UTF-8
        return None
    if not isinstance(obj, dict) or "step" in obj or EVAL_CACHE_KEY not in obj or "loss" not in obj:
        return None
    model = obj.get("model")
    of = f" of {printable(model)}" if isinstance(model, str) else ""
    return f"a kto-train --eval-only result (one eval{of} on eval cache {printable(str(obj[EVAL_CACHE_KEY]))}), not a metrics log: it has no steps to plot; read it as JSON"


def _why_no_lines(run: Path) -> str:
    """What an empty metrics.jsonl means for this run: one trained with --log-every 0 and no eval
    cache writes no line at all; otherwise it stopped before its first logged step."""
    try:
        config = (read_run_config(run) or {}).get("config", {})
    except InputError:
        config = {}
    if config.get("log_every") == 0 and not config.get("eval_cache"):
        return "the run was trained with --log-every 0 and no --eval-cache, so it writes no metrics lines"
    return "it stopped before its first logged step (see its output), or has not reached it yet"


def _trend(log: RunLog, name: str, what: str, split: str = "train") -> str | None:
    steps, values = log.series(name, split)
    if not values:
        return None
    if len(values) == 1:
        return f"{what}: {values[0]:.4g} at step {steps[0]} (one point only)"
    # A train value is one logged window's mean (8 rows, say, with one undesirable row in it):
    # the first and the last quarter's means, not two single windows. Eval lines cover the whole
    # eval set each time, so first and last.
    k = max(1, len(values) // 4) if split == "train" else 1
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    delta = last - first
    word = "rose" if delta > 0 else "fell" if delta < 0 else "did not move"
    return f"{what} {word}: {first:.4g} ({_steps(steps[:k])}) -> {last:.4g} ({_steps(steps[-k:])})"


def _steps(steps: list[int]) -> str:
    """'step 3' for one point, 'mean of 4 points, steps 1-4' for several (steps without a value,
    null ones, lie between and are not counted)."""
    return f"step {steps[0]}" if len(steps) == 1 else f"mean of {len(steps)} points, steps {steps[0]}-{steps[-1]}"


# null by design, whatever the line: memory kto-train could not read (no /proc off Linux), and
# the skipped-update count of a run without fp16's loss scaler.
ALWAYS_NULLABLE = ("rss_anon_gb", "rss_file_gb", "updates_skipped")


def _null_by_design(rec: dict, name: str) -> bool:
    """A null that is no non-finite value: an eval line's train-only keys (every line carries
    every key: formats/metrics_line.py), unreadable memory, a class absent from the window, the
    gradient norm of an update fp16's loss scaler skipped (it overflowed: the skip says so)."""
    if (rec.get("split") == "eval" and name in TRAIN_ONLY_KEYS) or (rec.get("split") != "eval" and name in EVAL_ONLY_KEYS) or name in ALWAYS_NULLABLE:
        return True
    if name == "grad_norm" and rec.get("updates_skipped"):
        return True
    return any(not rec.get(c, 1) for c in NEEDS.get(name, ()))


def non_finite_metrics(log: RunLog) -> list[str]:
    """'loss at steps 3, 4' for each metric that is null (kto-train writes NaN and inf as null)
    or non-finite where it should have a value. A class metric of a window without that class
    (NEEDS) is null by design and is not counted."""
    out = []
    for split, records in (("", log.train), ("eval ", log.eval)):
        steps: dict[str, list[int]] = {}
        for rec in records:
            for name, value in rec.items():
                # Most values are finite numbers: that test first, inline (once per key and line).
                if (value is not None and (type(value) is not float or math.isfinite(value))) or name in ("step", "split") or _null_by_design(rec, name):
                    continue
                steps.setdefault(name, []).append(rec["step"])
        for name, at in steps.items():
            shown = ", ".join(map(str, at[:5])) + (f", … ({len(at)} steps)" if len(at) > 5 else "")
            out.append(f"{split}{printable(name)} at step{'s' if len(at) > 1 else ''} {shown}")
    return out


def _skipped_updates_line(log: RunLog) -> str | None:
    """How many updates fp16's loss scaler skipped (their steps did not move the weights), and in
    which logged windows; None where it skipped none or the run had no loss scaler."""
    windows = [(rec["step"], rec["updates_skipped"]) for rec in log.train if rec.get("updates_skipped")]
    if not windows:
        return None
    total = sum(n for _, n in windows)
    shown = ", ".join(str(step) for step, _ in windows[:5]) + (f", … ({len(windows)} lines)" if len(windows) > 5 else "")
    updates = "that update" if total == 1 else f"those {total} updates"
    return f"UPDATES SKIPPED by fp16 loss scaling (a gradient overflowed): {total}, in the window{'s' if len(windows) > 1 else ''} ending at step{'s' if len(windows) > 1 else ''} {shown}; {updates} did not move the weights"


def _kl_line(kl: list[float], raw: tuple[list[int], list[float]], prefix: str) -> str:
    """Whether the clamped KL estimate sat at 0, and why where its raw estimate never rose above it."""
    zeros = sum(v == 0 for v in kl)
    line = f"{prefix}KL estimate (clamped): 0 at {zeros} of {len(kl)} logged steps"
    if zeros == len(kl) and len(kl) > 1:
        line += "; stuck at 0"
        if raw[1] and max(raw[1]) <= 0:
            line += _raw_below_zero(*raw)
    return line


# A raw KL estimate within this of 0 at every logged step: the policy has not moved on the KL
# pairs (fp32 rounding of a step-0 policy gives ~1e-5 on a row of hundreds of tokens).
UNMOVED_KL = 1e-3


def _raw_below_zero(steps: list[int], kl_raw: list[float]) -> str:
    """Why a raw estimate that never rose above 0 kept the clamped one there. Within UNMOVED_KL of
    0 throughout: the policy has not moved. Fallen to below twice its first value (and by more
    than UNMOVED_KL): it moved, lowering the mismatched pairs' log-probs. Otherwise the numbers
    cannot tell: a bf16 policy, or a cache scored with other numerics, starts off 0 by up to
    0.15 a token (kto-train's step-0 check prints it), and so may stay there without moving."""
    first, lowest = kl_raw[0], min(kl_raw)
    seen = f"{first:.3g} at step {steps[0]}, {kl_raw[-1]:.3g} at step {steps[-1]}, lowest {lowest:.3g}"
    if lowest >= -UNMOVED_KL:
        return f" (raw estimate always within {UNMOVED_KL:g} of 0, lowest {lowest:.3g}: the policy has not moved off the reference on the KL pairs, or the learning rate is too low to tell)"
    if lowest < 2 * first - UNMOVED_KL:
        return f" (raw estimate always <= 0: {seen}: the policy moved, lowering its log-probs of the mismatched pairs below the reference's, and the clamp keeps z at 0)"
    return (
        f" (raw estimate always <= 0: {seen}: below 0 from the first logged step on, which the run's numerics alone can do "
        "(see its step-0 check) as well as a policy that lowered the mismatched pairs' log-probs)"
    )


def checks(log: RunLog) -> list[str]:
    """Sentences answering: are all metrics finite, is the KL stuck at 0, did rewards move the right way?"""
    out = []
    bad = non_finite_metrics(log)
    if bad:
        out.append(f"NON-FINITE metrics (NaN or inf, written as null): {'; '.join(bad)}; the run diverged or its cache holds NaN")
    skipped = _skipped_updates_line(log)
    if skipped:
        out.append(skipped)
    split = "train" if log.series("kl")[1] else "eval"  # a run logged with --log-every 0 has eval lines only
    _, kl = log.series("kl", split)
    if kl:
        out.append(_kl_line(kl, log.series("kl_raw", split), "" if split == "train" else "eval "))
    elif any("kl" in rec for rec in log.train + log.eval):
        out.append("KL estimate: logged, but never finite (see the non-finite metrics above)")
    else:
        out.append("KL estimate: not logged (a loss without a KL term, or no train lines)")
    evals, other, _ = on_last_eval_cache(log)
    left_out = f" ({evals_left_out(other)})" if other else ""
    for split, prefix in (("train", ""), ("eval", "eval ")):
        for name, what in (("rewards/chosen", "desirable rewards"), ("rewards/rejected", "undesirable rewards"), ("rewards/margins", "reward margin")):
            line = _trend(log if split == "train" else evals, name, prefix + what, split)
            if line:
                out.append(line + (left_out if split == "eval" else ""))
    best = best_eval(log)
    if best:
        out.append(best)
    absent = [
        n
        # kl and kl_raw: the KL line above says when they are missing.
        for n in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "lr", "grad_norm", "tokens_per_s")
        if log.train and all(n not in rec for rec in log.train)
    ]
    if absent:
        out.append(f"not in the train lines: {', '.join(absent)}")
    return out


def _evals(n: int, which: str = "") -> str:
    return f"{n} {which}eval{'s' if n != 1 else ''}"


def evals_left_out(n: int) -> str:
    """'2 earlier evals on another eval cache left out': said by the checks and the plots alike."""
    return f"{_evals(n, 'earlier ')} on another eval cache left out"


def _record(log: RunLog) -> dict | None:
    """The run record, for a run's own metrics.jsonl; None for another metrics file (an earlier
    run's, set aside: the run's checkpoints and eval caches are not its)."""
    run = log.path.parent
    if log.path.name != METRICS_NAME or record_path(run) is None:
        return None
    try:
        return read_run_config(run) or {}
    except InputError:
        return {}


def on_last_eval_cache(log: RunLog) -> tuple[RunLog, int, str | None]:
    """`log` with only the eval lines made on the last eval's cache (a resume may change
    --eval-cache, and losses on two caches do not compare), how many others it left out, and
    that cache's name (metrics_line.EVAL_CACHE_KEY). A line without one was written before eval
    lines named their cache, when a resume could not change it: the run's first eval cache."""
    derived = (_record(log) or {}).get("derived", {})
    first = eval_cache_at_start(derived)
    first = eval_cache_name(first) if isinstance(first, str) else None
    names = [rec.get(EVAL_CACHE_KEY) or first for rec in log.eval]
    if not names:
        return log, 0, None
    kept = [rec for rec, name in zip(log.eval, names, strict=True) if name == names[-1]]
    return replace(log, eval=kept), len(log.eval) - len(kept), names[-1]


def best_eval(log: RunLog) -> str | None:
    """The step of the lowest eval loss (the first of equal ones) on the last eval's cache, and,
    for a run's own metrics.jsonl, whether the run still holds that step's weights: its
    checkpoint-STEP/, or final/ when the run finished at that step. --save-total-limit deletes
    the older checkpoints whatever their eval loss (kto-train keeps checkpoints by step, not by
    a metric)."""
    evals, other, name = on_last_eval_cache(log)
    steps, values = evals.series("loss", "eval")
    if not values:
        return None
    value, step = min(zip(values, steps, strict=True))
    of = f"{_evals(len(values))} on eval cache {name}; {_evals(other, 'earlier ')} used another eval cache" if other else _evals(len(values))
    said = f"best eval loss: {value:.4g} at step {step} (of {of})"
    record, run = _record(log), log.path.parent
    if record is None:
        return said
    holders = [f"{checkpoint_dir(run, step).name}/"] if checkpoint_dir(run, step).is_dir() else []
    if record.get("finished_step") == step and (run / FINAL_DIR).is_dir():
        holders.append(f"{FINAL_DIR}/")
    if holders:
        held = f"{said}; {' and '.join(holders)} {'holds' if len(holders) == 1 else 'hold'} that step"
        sharded = holders[0] != f"{FINAL_DIR}/" and is_sharded_checkpoint(checkpoint_dir(run, step))  # no model: export makes one
        return f"{held}, as FSDP shards: `kto-inspect export {checkpoint_dir(run, step)} DIR` writes it as the folder final/ is" if sharded else held
    return f"{said}; no {checkpoint_dir(run, step).name}/ is left{_why_gone(record, step, log)}"


def _why_gone(record: dict, step: int, log: RunLog) -> str:
    """Why a step's checkpoint is not there: it was no save step of the run's settings, or it
    was and --save-total-limit deleted it; both named only where the settings make it certain.
    A stop by signal saves a checkpoint at any step, so with a limit, "no save step" is not
    certain either."""
    config = record.get("config", {})
    limit, every = config.get("save_total_limit"), config.get("save_every")
    saved = _saved_at(config, step, record.get("derived", {}).get("total_steps"), log)
    if saved is False and not limit:
        return f" (not saved: --save-every {every})" if every else " (not saved)"
    if saved is False:
        return f" (not a --save-every {every} step: not saved, unless a stop saved it and --save-total-limit {limit} deleted it)"
    if saved and limit:
        return f" (deleted by --save-total-limit {limit})"
    return f" (not saved, or deleted by --save-total-limit {limit})" if saved is None and limit else ""


def _saved_at(config: dict, step: int, total: object, log: RunLog) -> bool | None:
    """Did the run's settings save `step`: a multiple of --save-every, the last step (saved when
    the run saves at all), an epoch end with --save-each-epoch (its train line's epoch is
    whole)? None where they do not tell (no settings recorded, no train line at that step)."""
    every, each = config.get("save_every"), config.get("save_each_epoch")
    if every is None and each is None:
        return None
    if (every or each) and step == total:
        return True
    if every and step % every == 0:
        return True
    if not each:
        return False
    epochs = [rec.get("epoch") for rec in log.train if rec["step"] == step]
    if not epochs or not isinstance(epochs[0], (int, float)):
        return None
    return abs(epochs[0] - round(epochs[0])) < 1e-6


def last_values(records: list[dict]) -> dict:
    """The last line's metrics; a value that means nothing there (see NEEDS) becomes None."""
    if not records:
        return {}
    rec = records[-1]
    return {k: (None if any(not rec.get(c, 1) for c in NEEDS.get(k, ())) else v) for k, v in rec.items() if k != "split"}
