"""SIGINT, SIGTERM, SIGHUP and SIGUSR1 (formats/signals.py says why these) stop kto-train at a
step boundary, with a checkpoint, never mid-step; through the Python API only SIGINT and SIGTERM,
the others staying the host program's.

The first signal is only noted (`StopSignals`). After each optimizer step the loop asks
`requested()`: the main process decides (formats.errors.on_main) and every rank gets its answer,
so all ranks stop after the same step; a rank that stopped alone would leave the others waiting
in the next collective. The loop then saves a checkpoint, prints its path and the command that
resumes it, and raises `Interrupted`; the CLI exits with 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM, 129 for SIGHUP, 138 for SIGUSR1), as a shell reports a command a signal
ended. A signal the process ignored at its start stays ignored (`nohup` ignores SIGHUP).

torchrun (and `accelerate launch`, which runs it) forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to
its workers, each in a session of its own; SIGUSR1 only with `--signals-to-handle` naming it
(torch.distributed.elastic.multiprocessing.api, torch 2.13), else torchrun itself dies of it
without telling its workers.

A second SIGINT aborts at once (KeyboardInterrupt), unless it comes within ECHO_S of the first:
launchers forward the signal the terminal already sent to the whole process group (torchrun
sends its workers the SIGINT it received), and that echo is not the user asking twice. Once it
has unwound, kto.train.run raises `Aborted` in its place: what it left on disk (the checkpoint
it was writing, if any, is not there; the latest one is) and the command that resumes the run,
which the CLI prints as its one line, as the first signal's lines say theirs. Only where the
interrupt was the run's first exception: a Ctrl-C that came upon an error already on its way out
leaves that error to be seen (raise_in_place).

After the loop, while the main process uploads final/ (--push-to-hub), `stoppable_push` takes the
same signals: the first says that final/ is complete and the command that pushes it, and
raises `PushInterrupted` (an Interrupted: the same exit status).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from kto.formats.errors import InputError, log, on_main
from kto.formats.hub import hub_spec_of
from kto.formats.runrecord import checkpoint_dir
from kto.formats.signals import Stopped, after_hangup, loop_signals, not_ignored, take_over

if TYPE_CHECKING:
    from collections.abc import Iterator

    from accelerate import Accelerator

    from .config import TrainConfig

ECHO_S = 2.0


class Interrupted(Exception):
    """kto-train stopped on a signal after saving `checkpoint`; `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, checkpoint: Path, command: str):
        # Raised by the Python API (the CLI says its own lines): its resume in the API's words too.
        super().__init__(
            f"stopped by {signal.Signals(signum).name} with {checkpoint} saved; resume with: {command} (kto.train.run: the same TrainConfig with resume=True)"
        )
        self.signum, self.checkpoint, self.command = signum, checkpoint, command
        self.exit_code = 128 + signum


class PushInterrupted(Interrupted):
    """A stop signal while the main process uploaded a finished run's final/ to the Hub
    (`stoppable_push`): `checkpoint` is that final/, whole; `command` pushes it (a finished run
    resumed trains nothing, then pushes); `exit_code` 128 + the signal. Its message is the line
    said then, and the API's way. It says nothing of the repo: whatever the upload left there,
    the next push replaces (formats/hub.py push_folder)."""

    def __init__(self, signum: int, final: Path, command: str, line: str):
        Exception.__init__(self, f"{line} (kto.train.run: the same TrainConfig with resume=True)")
        self.signum, self.checkpoint, self.command = signum, final, command
        self.exit_code = 128 + signum


class Aborted(KeyboardInterrupt):
    """kto-train interrupted without its checkpoint: a second Ctrl-C (or, through the Python API,
    a Ctrl-C outside the loop). `checkpoint`: the newest checkpoint left whole (None: none yet, the
    run starts over), `unfinished`: the checkpoint-STEP or final/ being written, of which nothing
    is kept (None: none was), `command`: what resumes the run; `exit_code` 130. Its message is
    the CLI's line (less `kto-train: `). A KeyboardInterrupt still, as the bare one it replaces:
    a host's `except KeyboardInterrupt` catches it and `except Exception` does not."""

    def __init__(self, checkpoint: Path | None, unfinished: Path | None, command: str, out: Path):
        self.signum, self.checkpoint, self.unfinished, self.command = signal.SIGINT, checkpoint, unfinished, command
        self.exit_code = 128 + signal.SIGINT
        before = f" before {unfinished} was whole (nothing of it is kept)" if unfinished is not None else ""
        if checkpoint is None:
            super().__init__(f"interrupted{before} with no checkpoint saved in {out}; run the same command again (without --resume) to start the run over")
        else:
            super().__init__(f"interrupted{before}; the latest checkpoint is {checkpoint}; resume with: {command}")


def run_chain(exc: BaseException, entry: BaseException | None) -> list[BaseException]:
    """`exc` and the exceptions it was raised while handling (their __context__), newest first,
    as far as the run raised them: `entry`, the exception its caller was handling when it called
    kto.train.run (sys.exc_info() then), and what came before it are the caller's own."""
    chain: list[BaseException] = []
    while exc is not None and exc is not entry and all(exc is not e for e in chain):
        chain.append(exc)
        exc = exc.__context__
    return chain


# Said with an error that a Ctrl-C came upon (raise_in_place): on the CLI's one line, an
# InputError's message alone is printed, so there it is in the message; elsewhere a note.
INTERRUPT_NOTE = "a Ctrl-C came while kto-train was stopping on this error"


def raise_in_place(cfg: TrainConfig, exc: BaseException, entry: BaseException | None) -> None:
    """Called while handling `exc`, out of the run (`entry`: as run_chain). Where the run's first
    exception was a Ctrl-C (a second one; not a start-up stop signal, which says itself), raise
    `Aborted` (what it left, how to resume) chained to `exc`, which may be an error a library's
    clean-up raised on the file the interrupt left half-written (torch.save's zip writer:
    `RuntimeError: [enforce fail at inline_container.cc] unexpected pos`). Where a Ctrl-C came
    upon an error already on its way out (a NaN, a full disk; SIGINT is the host's again by then),
    raise that error, noted, as it was: it is the one to act on, and no `--resume` fixes it.
    Otherwise return, and the caller re-raises `exc`."""
    chain = run_chain(exc, entry)
    interrupts = [i for i, e in enumerate(chain) if isinstance(e, KeyboardInterrupt)]
    if not interrupts:
        return
    first = interrupts[-1]
    if first == len(chain) - 1:
        if not isinstance(chain[first], Stopped):
            raise aborted(cfg, chain) from exc
        return
    real = chain[first + 1]  # what was on its way out when the interrupt came
    if isinstance(real, InputError) and real.args:
        real.args = (f"{real.args[0]}; {INTERRUPT_NOTE}", *real.args[1:])
    else:
        real.add_note(INTERRUPT_NOTE)
    reraise_as_it_was(real)


def reraise_as_it_was(exc: BaseException) -> NoReturn:
    """Raise `exc` again with the cause and context it had: raising it while another exception
    is handled would make that one its context (here the interrupt, shown above it as if first)."""
    context, suppress = exc.__context__, exc.__suppress_context__
    try:
        raise exc
    finally:
        exc.__context__, exc.__suppress_context__ = context, suppress


def aborted(cfg: TrainConfig, chain: list[BaseException]) -> Aborted:
    """What an interrupt out of the run (a second Ctrl-C, and what its cleanup raised: run_chain)
    left in cfg.out, read once everything it interrupted has unwound (the temp folder of a
    checkpoint half-written is gone)."""
    from .checkpoint import checkpoints

    saved = checkpoints(cfg.out) if cfg.out.is_dir() else []
    unfinished = being_saved(chain)
    if unfinished is not None and unfinished.is_dir():
        unfinished = None  # the save was whole: the signal came after it (pruning, its log line)
    return Aborted(saved[-1][1] if saved else None, unfinished, resume_command(cfg), cfg.out)


def being_saved(chain: list[BaseException]) -> Path | None:
    """OUT/checkpoint-STEP or OUT/final that the interrupt (`chain`, run_chain's, which ends
    with it) interrupted the saving of, or None. Read from the frames it passed through (every
    layout, plain, LoRA or FSDP, saves through Policy.save and Policy.finish): only the frames
    know, since atomic_dir removes its temp folder as the exception leaves it."""
    from kto.formats.runrecord import FINAL_DIR

    from .policy import Policy

    found = None
    for exc in chain:  # an error raised while handling the interrupt came through them too
        tb = exc.__traceback__
        while tb is not None:  # the innermost save wins
            frame, tb = tb.tb_frame, tb.tb_next
            policy = frame.f_locals.get("self")
            if frame.f_code is Policy.save.__code__:
                found = checkpoint_dir(policy.cfg.out, frame.f_locals["position"].global_step)
            elif frame.f_code is Policy.finish.__code__:
                found = policy.cfg.out / FINAL_DIR
        if found is not None:
            return found
    return None


class StopSignals:
    """While active (a context manager), the stop signals are noted instead of killing the
    process: all four under the command line, SIGINT and SIGTERM alone through the Python API
    (formats.signals.loop_signals). It takes them over from kto-train's start-up, whose handlers
    raise instead, installing its own before theirs go (formats.signals.take_over), and puts
    back those from before the start-up when it ends. Outside the main thread (signals cannot
    be caught there) it notes nothing."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.signum: int | None = None
        self.at = 0.0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = take_over(self._note, loop_signals())
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        after_hangup(signum)  # the lines below, and the loop's, must not fail on a terminal gone
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
            again = "; Ctrl-C again aborts without saving" if signum == signal.SIGINT else ""
            log(f"{signal.Signals(signum).name}: stopping after this step, with a checkpoint{again}", self.accelerator)
        elif signum == signal.SIGINT and time.monotonic() - self.at > ECHO_S:
            raise KeyboardInterrupt

    def requested(self) -> int | None:
        """The signal the main process received (the same answer on every rank), or None."""
        return on_main(lambda: self.signum, self.accelerator)


def push_stop_line(signum: int, final: Path, repo: str, command: str, processes: int) -> str:
    """What a stop signal during the upload of `final` says (less `kto-train: `)."""
    launcher = f" (under the same launcher, {processes} processes)" if processes > 1 else ""
    name = signal.Signals(signum).name
    return f"stopped by {name} while pushing {final} to {repo} on the Hub; {final} is complete: push it{launcher} with: {command}"


@contextlib.contextmanager
def stoppable_push(cfg: TrainConfig, final: Path, processes: int) -> Iterator[None]:
    """The upload of a finished run's `final` (kto.train.run, main process). The loop's
    StopSignals gave the signals back, so a SIGTERM here ended the process silently (143) and a
    Ctrl-C said only `interrupted`, on an upload that takes minutes on a real model. Here the
    first stop signal (loop_signals(), those not ignored) says at once that final/ is complete
    and the command that pushes it, and raises PushInterrupted out of the upload: said in the
    handler, since huggingface_hub then waits for its upload threads (ThreadPoolExecutor's
    exit), and a scheduler's SIGKILL may come first. A second Ctrl-C within ECHO_S is the
    first's echo (StopSignals' docstring); a later one, or another signal, raises again, out of
    that wait. Outside the main thread (signals cannot be caught there) it installs nothing."""
    command = resume_command(cfg)
    state: dict[str, Any] = {"first": None, "at": 0.0, "said": False, "closing": False}

    def line() -> str:
        return "kto-train: " + push_stop_line(state["first"], final, cfg.push_to_hub or "", command, processes)

    def note(signum: int, frame: FrameType | None) -> None:
        after_hangup(signum)  # the line must not fail on a terminal gone
        first = state["first"]
        if state["closing"] or (first is not None and signum == signal.SIGINT and time.monotonic() - state["at"] <= ECHO_S):
            return
        if first is None:
            state["first"], state["at"] = signum, time.monotonic()
            # A write this signal interrupted (a progress bar's) refuses a reentrant one: said below then.
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                log(line())
                state["said"] = True
        raise Stopped(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, note) for s in not_ignored(loop_signals())}
    try:
        yield
    except Stopped as exc:
        state["closing"] = True  # a repeat from here on would only hide the line's exception
        state["first"] = exc.signum if state["first"] is None else state["first"]
        if not state["said"]:
            log(line())
        raise PushInterrupted(state["first"], final, command, line().removeprefix("kto-train: ")) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def resume_command(cfg: TrainConfig) -> str:
    """The kto-train command line that resumes this run: every setting that differs from its
    default, spelled as its flag, then --resume. Rebuilt from the configuration rather than
    sys.argv so that it is right however the run was started (a console script, torchrun,
    accelerate launch, the Python API) and holds what a --config file set."""
    from .config import TrainConfig

    words = ["kto-train"]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in ("cache", "eval_cache") and value is not None:
            value = hub_spec_of(value) or value  # an `hf:` cache as typed, not its local snapshot
        if f.name == "resume" or value == f.default or value is None or value == {}:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):  # a flag on by default is turned off by its --no- form
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):  # --lr-schedule-kwargs takes JSON
            words += [flag, json.dumps(value)]
        else:
            words += [flag, ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
    return shlex.join([*words, "--resume"])
