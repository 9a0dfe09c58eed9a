"""kto-train: set up, then for each step: batches → forward/backward → optimizer → log → eval →
save → stop if a signal asked to (train/stop.py), then final/."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from kto.formats.atomic import DiskFullError, FileTooLargeError
from kto.formats.compute.numerics import NAMES, train_numerics
from kto.formats.errors import InputError, log, on_main
from kto.formats.memory import POLLED, peak_words
from kto.formats.metrics_line import EVAL_CACHE_KEY, eval_cache_name
from kto.formats.runrecord import checkpoint_dir

from .checkpoint import Position, checkpoints
from .checks import DEFAULT_DRIFT_TOLERANCE, Drift, drift_of, step0_drift
from .config import TrainConfig, ignored_setting_notes
from .data import KTOMicroBatch, Prefetcher, collate_micro_batch, epoch_plan
from .evaluate import evaluate
from .guard import check_step
from .metrics import close_after_failure
from .model_card import final_files
from .processes import borrowed_accelerate_state, borrowed_rng_state
from .progress import TrainProgress, number
from .rundir import changes_left_unused, finished_final, lock_run_dir, mark_finished
from .setup import Run, check_inputs, setup
from .step import StepStats, all_reduce_max, apply_update, clip_gradients, forward_backward, summarize
from .stop import Interrupted, StopSignals, resume_command

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import torch

    from .step import PolicyPass


@dataclass(frozen=True)
class Trained:
    """What `train` hands the API: final/, whether this process is the main one (it alone
    pushes to the Hub) and how many processes ran (a stopped push's command says to run it under
    the same launcher), read before accelerate's state is given back (train/processes.py)."""

    final: Path
    main_process: bool
    processes: int


def train(cfg: TrainConfig) -> Trained:
    # A second run in this process starts as the first did; the caller's random generators are
    # theirs again after it.
    with borrowed_accelerate_state(), borrowed_rng_state():
        checked = check_inputs(cfg)  # every start-up check: nothing is written to --out before they pass
        for note in ignored_setting_notes(checked.cfg):
            log(note, checked.accelerator)
        with lock_run_dir(cfg.out, checked.accelerator):  # one kto-train per run directory, for the whole run
            final = on_main(lambda: finished_final(cfg, checked.record), checked.accelerator)
            if final is not None:
                unused = on_main(lambda: changes_left_unused(cfg.out, checked.record), checked.accelerator) or []
                but = f" (the changed {', '.join(unused)} apply to no step: none is left)" if unused else ""
                log(
                    f"--resume: {cfg.out} finished all {checked.total_steps} steps (final/ holds step {checked.total_steps}); nothing to do{but}",
                    checked.accelerator,
                )
            else:
                with resumable_after_disk_full(cfg.out):
                    final = run_steps(setup(checked))
        return Trained(final, checked.accelerator.is_main_process, checked.accelerator.num_processes)


@contextlib.contextmanager
def resumable_after_disk_full(out: Path) -> Iterator[None]:
    """A full disk, or a file past the file-size limit, stops the run; a run that saved a
    checkpoint goes on with --resume (run again as it was, it would be refused as an earlier
    run); one that saved none starts over."""
    try:
        yield
    except (DiskFullError, FileTooLargeError) as exc:
        saved = checkpoints(out)
        if not saved:
            raise
        then = f"continue with --resume (from {saved[-1][1].name} or an earlier checkpoint)"
        if isinstance(exc, FileTooLargeError):
            raise FileTooLargeError(exc.path, exc.limit, then) from None
        raise DiskFullError(exc.path, then) from None


def run_steps(run: Run) -> Path:
    """The loop: one optimizer step, then what is due after it (log, eval, save, a requested stop)."""
    # The next step's batches are collated on a background thread while this step computes.
    prefetch = Prefetcher(lambda position: step_micro_batches(run, position))
    try:
        progress = TrainProgress(run.total_steps, run.position.global_step, enabled=run.accelerator.is_main_process)
        run.skipped_updates = list(run.position.skipped_updates)
        window = Window.resumed(run.position.unlogged, run.accelerator.device)
        run.position = replace(run.position, unlogged=(), skipped_updates=())  # the run holds them from here
        # The meter polls memory on a thread for the whole loop: a sample after each step saw
        # memory the step had freed, not its peak (formats/memory.py).
        with progress.lines_above(), StopSignals(run.accelerator) as signals, run.memory.polling():
            while run.position.global_step < run.total_steps:
                stats, done = train_step(run, prefetch)
                progress.step()
                window.add(stats)
                window = after_step(run, window, done, progress)
                if (signum := signals.requested()) is not None and run.position.global_step < run.total_steps:
                    stop(run, signum, window)
            # Still inside StopSignals: a SIGTERM or Ctrl-C while final/ is written (minutes for
            # a large model) is noted, not fatal; the trained steps are not lost with it.
            final = finish(run)
            if run.skipped_updates:
                log(skipped_updates_line(run.skipped_updates), run.accelerator)
            if signals.signum is not None:
                log(f"kto-train: {signal.Signals(signals.signum).name} came after the last step; the run finished and {final} is whole", run.accelerator)
        # The last line, below the bar: the figure to size a job from, as kto-precompute's gives it.
        # Rank 0's, printed by it: under a launcher each process has its own (a machine holds them all).
        per = f" (rank 0's; each of the {run.accelerator.num_processes} processes has its own)" if run.accelerator.num_processes > 1 else ""
        log(f"kto-train: done at step {run.position.global_step}, peak memory {peak_words(run.memory, POLLED)}{per}", run.accelerator)
    except BaseException:  # a NaN, the step-0 check, a second Ctrl-C, a full disk, a bug
        if not run.records_closed:
            close_after_failure(run.metrics, run.accelerator)
        raise
    finally:
        prefetch.close()
    return final


@dataclass
class Window:
    """The steps since the last logged line: their stats, summed, and when the first began."""

    stats: StepStats | None = None
    started: float = field(default_factory=lambda: time.perf_counter())  # looked up per window: a test's clock

    def add(self, stats: StepStats) -> None:
        self.stats = stats if self.stats is None else self.stats.plus(stats)

    @classmethod
    def resumed(cls, unlogged: tuple[float, ...], device: torch.device) -> Window:
        """The window a checkpoint saved between two lines (Position.unlogged), less its token
        count: tokens/s is measured over this process's steps only."""
        import torch

        if not unlogged:
            return cls()
        stats = StepStats.unstacked(torch.tensor(unlogged, dtype=torch.float64, device=device))
        return cls(stats._replace(tokens=torch.zeros_like(stats.tokens)))

    def saved(self) -> tuple[float, ...]:
        """What Position.unlogged keeps of this window."""
        return () if self.stats is None else tuple(self.stats.stacked().tolist())


class StepDone(NamedTuple):
    grad_norm: float
    lr: float  # the rate this step's update used (the scheduler then moves on to the next step's)


def train_step(run: Run, prefetch: Prefetcher) -> tuple[StepStats, StepDone]:
    """One optimizer step: its batches, forward/backward, the all-reduced stats, the checks, the
    update; `run.position` advances. Returns the step's stats, its gradient norm and its lr."""
    nxt = advance(run.position, run.steps_per_epoch)
    batches = [b.to(run.accelerator.device) for b in prefetch.get(run.position, nxt if nxt.global_step < run.total_steps else None)]
    if run.started is not None:  # tools/bench_startup.py times kto-train up to this line
        log(f"first step: set-up took {time.perf_counter() - run.started:.2f} s, {run.model_load_s:.2f} s of it loading the model", run.accelerator)
        run.started = None
    stats = forward_backward(run.model, batches, run.settings, run.accelerator, on_first_pass=first_step_check(run, batches[0]))
    stats = stats.all_reduced(run.accelerator)
    norm = clip_gradients(run.model, run.accelerator, run.cfg.max_grad_norm)
    grad_norm = check_step(stats, norm, run.accelerator, run.position.global_step + 1, run.policy.last_checkpoint, run.cfg)
    lr = run.policy.scheduler.get_last_lr()[0]
    skipped = apply_update(run.policy.optimizer, run.policy.scheduler)  # only after the check: a NaN never reaches the weights
    run.position = nxt
    if skipped:
        run.skipped_updates.append(nxt.global_step)
        scale = run.accelerator.scaler.get_scale()
        log(
            f"step {nxt.global_step}: fp16 loss scaling skipped this update (a gradient overflowed fp16; the weights did not move); loss scale now {scale:g}",
            run.accelerator,
        )
    return stats, StepDone(grad_norm, lr)


def after_step(run: Run, window: Window, done: StepDone, progress: TrainProgress) -> Window:
    """The line, eval and checkpoint due after this step; returns the window to add to next."""
    step, cfg = run.position.global_step, run.cfg
    if cfg.log_every and (step % cfg.log_every == 0 or step == run.total_steps):
        log_window(run, window.stats, done, time.perf_counter() - window.started, progress)
        window = Window()
    # An epoch ends where the position wrapped to the next epoch's first step. The last step is
    # always evaluated (with an eval cache) and, when the run saves at all, checkpointed too, as
    # transformers' Trainer does: the last epoch has its checkpoint, a crash while writing final/
    # loses no step, and a finished run resumed to write more (--merge-adapters) trains none again.
    # Its eval comes before its save, so a resume from it does not evaluate step N a second time.
    epoch_ended, last = run.position.step_in_epoch == 0, step == run.total_steps
    paused = time.perf_counter()
    # The bar's clock runs on (train/progress.py): its ETA is wall time, evals and saves included.
    if run.eval_cache and (last or (cfg.eval_every and step % cfg.eval_every == 0) or (cfg.eval_each_epoch and epoch_ended)):
        run_eval(run, progress)
    if (cfg.save_every and (last or step % cfg.save_every == 0)) or (cfg.save_each_epoch and (last or epoch_ended)):
        # An epoch may end between logged lines: the checkpoint keeps the steps not yet logged,
        # so a resumed run logs the lines the uninterrupted one would (as a signal stop does).
        run.policy.save(saved_position(run, window))
    # tokens_per_s is the steps' throughput: the window's clock stands still while an eval or a
    # save runs (the line after an eval logged ~120 tokens/s against ~3000 when it did not),
    # whether they fall between two windows or inside one (--log-every 2 --eval-every 1).
    window.started += time.perf_counter() - paused
    return window


def saved_position(run: Run, window: Window) -> Position:
    """The position a checkpoint keeps: with the steps not yet logged and the updates skipped so far."""
    return replace(run.position, unlogged=window.saved(), skipped_updates=tuple(run.skipped_updates))


def stop(run: Run, signum: int, window: Window) -> NoReturn:
    """A signal asked to stop: checkpoint this step (unless --save-every just did), with the
    steps not yet logged, say where it is and how to resume, close the records, raise
    Interrupted (the CLI exits 128 + signum)."""
    step, acc = run.position.global_step, run.accelerator
    path = run.policy.last_checkpoint
    if path != checkpoint_dir(run.cfg.out, step):
        path = run.policy.save(saved_position(run, window))
    command = resume_command(run.cfg)
    launcher = f" (under the same launcher, {acc.num_processes} processes)" if acc.num_processes > 1 else ""
    log(f"kto-train: stopped by {signal.Signals(signum).name} after step {step} of {run.total_steps}: saved {path}", acc)
    log(f"resume with{launcher}: {command}", acc)
    close_records(run)
    raise Interrupted(signum, path, command)


def step_micro_batches(run: Run, p: Position) -> list[KTOMicroBatch]:
    """This process's micro-batches for step `p`, on the CPU (pinned for CUDA). The epoch's plan
    is built once; only one thread at a time calls this (see Prefetcher)."""
    if run.plan_epoch != p.epoch:
        run.plan, run.plan_epoch = epoch_plan(run.lengths, run.shape, run.cfg.seed, p.epoch, run.groups), p.epoch
    slots = run.plan[p.step_in_epoch, run.accelerator.process_index]
    first = run.is_reference and p.global_step == 0
    pad_id = run.pad_id
    batches = [collate_micro_batch(run.cache, s, pad_id, with_token_logps=first) for s in slots]
    return [b.pin_memory() for b in batches] if run.accelerator.device.type == "cuda" else batches


def advance(p: Position, per_epoch: int) -> Position:
    nxt = p.step_in_epoch + 1
    return Position(p.global_step + 1, p.epoch + nxt // per_epoch, nxt % per_epoch)


def first_step_check(run: Run, batch: KTOMicroBatch) -> Callable[[PolicyPass], None] | None:
    """Step 0 with --model = the reference: the policy's log-probs must reproduce the cache.

    With dropout off (the default) a training-mode forward is numerically an evaluation one, so
    the check reads the first micro-batch's own forward (it costs nothing) and stops the run
    before the first backward and optimizer step. --keep-dropout makes the training forward
    noisy: the check then runs a separate forward in evaluation mode first.
    Returns the callback for `forward_backward`, or None.
    """
    if not run.is_reference or run.position.global_step != 0:
        return None
    if batch.ref_token_logps is None or all(x is None for x in batch.ref_token_logps):
        log("step-0 check skipped: the cache has no per-token log-probs (--no-token-logps)", run.accelerator)
        return None
    if run.cfg.keep_dropout:
        with evaluation_mode(run.model):
            check_drift(run, step0_drift(run.model, batch))
        return None
    return lambda first: check_drift(run, drift_of(first.flat, batch))


def check_drift(run: Run, drift: Drift) -> None:
    """Stop (InputError) when the step-0 drift is past the tolerance, the same on every rank."""
    cfg, accelerator = run.cfg, run.accelerator
    cache_numerics = run.cache.manifest.content.dtype
    # Every rank checks its own first micro-batch; they must all stop or none, or the ranks that
    # go on would wait for the stopped ones in the next collective.
    drift = replace(drift, max_abs=all_reduce_max(drift.max_abs, accelerator))
    numerics = train_numerics(cfg.dtype, accelerator.mixed_precision)
    tolerance = cfg.drift_tolerance if cfg.drift_tolerance is not None else DEFAULT_DRIFT_TOLERANCE[numerics.compute]
    log(
        f"step-0 check: max |Δ log p| per token vs cache = {drift.max_abs:.2e} over {drift.tokens} tokens "
        f"(tolerance {tolerance:g}; cache numerics {cache_numerics}, this run {numerics.name})",
        accelerator,
    )
    if run.policy.quantized and cfg.drift_tolerance is None:
        log(
            "step-0 check: not enforced with quantized base weights (the cache's reference is the unquantized "
            "--model; the drift above is the quantization error); --drift-tolerance enforces one",
            accelerator,
        )
        return
    if drift.max_abs > tolerance:
        raise InputError(
            f"--model {cfg.model}: step-0 log-probs differ from the cache by up to {drift.max_abs:.3g} per token "
            f"(tolerance {tolerance:g}); {drift_cause(run, cache_numerics, numerics.name)}"
        )


def drift_cause(run: Run, cache_numerics: str, numerics: str) -> str:
    """The likely cause of a step-0 drift past the tolerance, and what to do about it. With
    quantized base weights that is the quantization itself (the cache's reference is the
    unquantized --model), which no matching of kernels or versions removes: naming those sent a
    user hunting for a difference that is not there."""
    if run.policy.quantized:
        base = "4-bit NF4" if run.cfg.load_in_4bit else "8-bit"
        return (
            f"the base weights are quantized ({base}, bitsandbytes) and the cache's reference is the unquantized --model: "
            "that quantization error is the likely cause. Raise --drift-tolerance knowingly, or leave it out "
            "(the check is then reported, not enforced, with quantized base weights)."
        )
    if cache_numerics == numerics:
        return "attention implementation or library versions differ from kto-precompute's. Match them, or raise --drift-tolerance knowingly."
    ways = ways_to_match(cache_numerics, numerics, run.cfg.dtype, run.accelerator.mixed_precision, run.accelerator.device.type)
    return f"the cache was scored with {cache_numerics} and this run computes with {numerics}. Match them{ways}, or raise --drift-tolerance knowingly."


def ways_to_match(cache_numerics: str, numerics: str, dtype: str, mixed: str, device_type: str) -> str:
    """' (kto-train --mixed-precision bf16, or kto-precompute --dtype fp32 for a new cache)': the
    flags that make the two numerics one, either side. kto-train computes as the cache was scored
    (an `amp-X` cache: fp32 weights under X autocast), naming the flags this run has otherwise;
    kto-precompute scores a new cache as this run computes, where that is one of its --dtype names."""
    ways, named = [], set(NAMES) - {"auto"}  # what a manifest records and kto-precompute --dtype takes
    if cache_numerics in named:
        weights, amp = ("fp32", cache_numerics.removeprefix("amp-")) if cache_numerics.startswith("amp-") else (cache_numerics, "no")
        flags = [f"--dtype {weights}"] * (weights != dtype) + [f"--mixed-precision {amp}"] * (amp != mixed)
        cpu = " on a GPU (it runs no fp16 autocast on CPU)" if amp == "fp16" and device_type != "cuda" else ""
        ways += [f"kto-train {' '.join(flags)}{cpu}"] if flags else []
    if numerics in named:
        ways.append(f"kto-precompute --dtype {numerics} for a new cache")
    return f" ({', or '.join(ways)})" if ways else ""


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """No dropout while checking or evaluating, even with --keep-dropout; back to train() after."""
    model.eval()
    try:
        yield
    finally:
        model.train()


def log_window(run: Run, window: StepStats, last: StepDone, seconds: float, progress: TrainProgress) -> None:
    """Metrics over the steps since the last line (already summed over ranks); `lr` and
    `grad_norm` are the last step's. `lr` is the rate the last step trained with, read before the
    scheduler moves on, as transformers' Trainer reads it. Under fp16's loss scaler the line also
    counts the window's updates it skipped (`updates_skipped`)."""
    p = run.position
    line = summarize(window, run.cfg.sft_weight)
    if run.accelerator.scaler is not None:  # the window's steps: the last line's step + 1 .. this one
        first = p.global_step - round(float(window.steps)) + 1
        line["updates_skipped"] = sum(step >= first for step in run.skipped_updates)
    line.update(
        lr=last.lr,
        grad_norm=last.grad_norm,
        epoch=p.epoch + p.step_in_epoch / run.steps_per_epoch,
        tokens_per_s=line.pop("tokens") / max(seconds, 1e-9),
        **run.memory.take_window(),
    )
    if run.metrics:
        run.metrics.write(p.global_step, line)
    progress.window(line["tokens_per_s"], line["loss"])
    kl = f" kl {number(line['kl'])}" if "kl" in line else ""  # no KL term: none logged
    progress.line(f"step {p.global_step}/{run.total_steps} loss {number(line['loss'])}{kl} margin {number(line['rewards/margins'])}")


def skipped_updates_line(steps: list[int]) -> str:
    """The run's last word on fp16's skipped updates: how many, and at which steps (the first
    ten), so that a run whose steps trained nothing is not taken for one that trained."""
    shown = ", ".join(map(str, steps[:10])) + (", ..." if len(steps) > 10 else "")
    if len(steps) == 1:
        return f"kto-train: fp16 loss scaling skipped one update of this run (step {shown}): the weights did not move at that step"
    return f"kto-train: fp16 loss scaling skipped {len(steps)} updates of this run (steps {shown}): the weights did not move at those steps"


def run_eval(run: Run, progress: TrainProgress) -> None:
    cfg = run.cfg
    with evaluation_mode(run.model):
        result = evaluate(run.model, run.eval_cache, run.settings, run.pad_id, cfg.eval_rows_per_batch, run.accelerator)
    if run.metrics:
        # Named by its eval cache: a resume may evaluate on another (kto-inspect run compares like with like).
        line = {**result, EVAL_CACHE_KEY: eval_cache_name(run.eval_cache.manifest.fingerprint)}
        run.metrics.write(run.position.global_step, line, split="eval")
    progress.line(f"eval @ {run.position.global_step}: loss {number(result['loss'])} margin {number(result['rewards/margins'])}")


def finish(run: Run) -> Path:
    """Save OUT/final atomically with its model card inside, close the metrics and the trackers."""
    adapter = run.policy.trainable.adapters_only
    cards = final_files(run.cfg, run.cache.manifest.content.inputs, adapter) if run.accelerator.is_main_process else None
    final = run.policy.finish(run.position.global_step, cards)
    if run.accelerator.is_main_process:
        mark_finished(run.cfg.out, run.position.global_step)
    close_records(run)
    return final


def close_records(run: Run) -> None:
    """metrics.jsonl closed (main process) and the trackers ended, on every rank together, when
    the run finished or a signal stopped it (a run that raises: `close_after_failure`, from
    run_steps). The process group stays: a caller may run again in it (train/processes.py);
    kto-train ends it."""
    if run.metrics:
        run.metrics.close()
    run.accelerator.wait_for_everyone()
    for tracker in run.accelerator.trackers:  # accelerate's end_training, less destroying the group
        tracker.finish()
    run.records_closed = True
