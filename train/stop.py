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
sends its workers the SIGINT it received), and that echo is not the user asking twice.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from kto.formats.errors import log, on_main
from kto.formats.hub import hub_spec_of
from kto.formats.signals import after_hangup, loop_signals, take_over

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .config import TrainConfig

ECHO_S = 2.0


class Interrupted(Exception):
    """kto-train stopped on a signal after saving `checkpoint`; `exit_code` is 128 + the signal."""

    def __init__(self, signum: int, checkpoint: Path, command: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} with {checkpoint} saved; resume with: {command}")
        self.signum, self.checkpoint, self.command = signum, checkpoint, command
        self.exit_code = 128 + signum


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
