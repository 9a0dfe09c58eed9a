"""What the user reads on stderr: one exception type for every input problem, one `log`.

The CLIs catch `InputError` and print its message as a single line (no traceback), so the
message itself must name the file, row or flag that is wrong. Under several processes, a check
that only the main process makes reaches every rank through `on_main`.
"""

from __future__ import annotations

import functools
import importlib
import re
import signal
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .signals import Stopped

if TYPE_CHECKING:  # annotations only: this module imports no accelerate (or torch)
    from accelerate import Accelerator

T = TypeVar("T")


def log(msg: str, accelerator: Accelerator | None = None) -> None:
    """One progress or warning line on stderr, flushed; with `accelerator`, from its main
    process only (every process runs the same code, the user wants each line once)."""
    if accelerator is None or accelerator.is_main_process:
        to_stderr(msg)


def to_stderr(line: str) -> None:
    """`line` on stderr, flushed; nothing where stderr is closed (`2>&-`: sys.stderr is None,
    and print(file=None) would write it to stdout, beside --eval-only's JSON)."""
    if sys.stderr is not None:
        print(line, file=sys.stderr, flush=True)


class InputError(ValueError):
    """Bad user input: a file, a row, a flag. The message is shown to the user verbatim, on one
    line: its line breaks and control characters are escaped (`one_line`).

    `every_rank`: every process raises this same error (on_main's answer), so under a launcher
    only the main process prints it; the others exit with the same status, silently."""

    def __init__(self, message: str, *, every_rank: bool = False) -> None:
        super().__init__(one_line(message))
        self.every_rank = every_rank

    def _render_traceback_(self) -> list[str]:
        """How IPython (a Jupyter cell) shows it: the one line the commands print, not the ~70
        frames of kto's own code above it (the exception keeps its traceback for a debugger)."""
        return [f"{type(self).__name__}: {self}", *getattr(self, "__notes__", ())]


# What a terminal acts on instead of showing: C0 and C1 controls (newline, carriage return, ESC,
# BEL, ...), DEL, the Unicode line and paragraph separators, and the bidi marks, embeddings,
# overrides and isolates that reorder what follows them on screen.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    c = match[0]
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def one_line(text: str) -> str:
    """`text` with each character a terminal would act on written as its escape, as Python
    writes it in a string (`\\n`, `\\x1b`, `\\u202e`); all other text, CJK and emoji
    included, kept as it is. A path the user gave (`--out $'a\\nb'`) printed an error on two
    lines, where every error is one. Backslashes are kept, so a message built around another's
    is not escaped twice. kto-inspect's `printable` is this too."""
    return _UNPRINTABLE.sub(_escape, text)


def exception_line(exc: BaseException) -> str:
    """`Type: the first line of its message`: a library's error inside one line of ours (cutting
    the whole formatted line instead would drop what follows, a closing parenthesis included)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def import_or_refuse(module: str, *, missing: str, broken: str) -> types.ModuleType:
    """`module` imported, or a one-line InputError: `missing` where it is not installed, `broken
    (Type: message)` where it is but does not import (a dependency of its own missing or too
    old: then installing the extra again is not the fix, so the two are told apart)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name == module:
            raise InputError(missing) from None
        raise InputError(f"{broken} ({exception_line(exc)})") from None


def one_line_errors(prog: str) -> Callable:
    """Decorate a CLI entry point: an `InputError` becomes `PROG: error: MESSAGE` on stderr and
    exit status 2, never a traceback. The three commands share it, so they fail alike. A command
    is its process's whole life, so the process group a launcher made it join ends with it."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except InputError as exc:
                end_process_group(every_rank_here=say_once(f"{prog}: error: {exc}", exc.every_rank))
                sys.exit(2)
            except KeyboardInterrupt as exc:  # Ctrl-C where no handler notes it (kto-train's second one), or a stop signal
                exit_interrupted(prog, exc)

        return wrapper

    return decorate


def exit_interrupted(prog: str, exc: KeyboardInterrupt) -> NoReturn:
    """A KeyboardInterrupt that reached one_line_errors. formats.signals.Stopped (a stop signal
    while the command's start-up handlers were in, before the command could catch it: during its
    first import) says its signal and exits 128 + its number; any other is Ctrl-C: click would
    print "Aborted!" and exit 1, where a shell reports a SIGINT as 130. Its message, where it
    has one, is the line (kto-train's Aborted: what is on disk, how to resume)."""
    if isinstance(exc, Stopped):
        exit_on_signal(prog, exc.signum, "run the same command again")
    # kto-train's second Ctrl-C (train/stop.py Aborted) says what it left and how to resume.
    to_stderr(f"{prog}: {one_line(str(exc)) or 'interrupted'}")
    end_process_group()
    sys.exit(128 + signal.SIGINT)


def exit_on_signal(prog: str, signum: int, what: str) -> NoReturn:
    """Print `PROG: stopped by SIGTERM; WHAT` once (under a launcher every rank got the signal,
    see say_once), end the process group as an error does, and exit 128 + signum."""
    alike = say_once(f"{prog}: stopped by {signal.Signals(signum).name}; {what}", False)
    end_process_group(every_rank_here=alike)
    sys.exit(128 + signum)


def usage_line(prog: str, exc: click.UsageError) -> str:
    """click's usage error as one `PROG: error: MESSAGE` line, its own text kept (it names the
    option). A value of the wrong type says which flag, enough; an unknown or missing option
    also says where the options are listed (click's `Try '... --help'` line, folded in)."""
    line = f"{prog}: error: {' '.join(exc.format_message().split())}"
    if isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter):
        return line
    ctx, names = exc.ctx, []
    while ctx is not None and ctx.parent is not None:  # a subcommand's name, under its group's prog
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return f"{line} (see {' '.join([prog, *names, '--help'])})"


def exit_with_usage_line(prog: str, exc: click.UsageError) -> NoReturn:
    """Say click's usage error `exc` as one line (usage_line), once under a launcher (every
    process parses the same flags), and exit with click's status for it."""
    say_once(usage_line(prog, exc), False)
    raise click.exceptions.Exit(exc.exit_code) from None


def one_line_usage(prog: str, base: type[click.Command] = click.Command) -> type[click.Command]:
    """`base` whose usage errors (a value of the wrong type, an unknown or missing option) are
    one line, as an InputError's, exit status 2 as click's: click printed three (`Usage: ...`,
    `Try ... --help`, `Error: ...`). --help is click's own. Under a launcher said once (say_once).
    kto-inspect's; kto-precompute's and kto-train's class (formats/config_keys.py) does the same
    in its parse_args, after naming our option for another tool's."""

    class OneLine(base):
        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            try:
                return super().parse_args(ctx, args)
            except click.exceptions.NoArgsIsHelpError:  # a bare group prints its help, as click does
                raise
            except click.UsageError as exc:
                exit_with_usage_line(prog, exc)

    OneLine.__name__ = OneLine.__qualname__ = base.__name__
    return OneLine


def say_once(line: str, every_rank: bool, show: Callable[[], None] | None = None) -> bool:
    """Print an error `line` once for the user reading a launcher's merged stderr: the main
    process prints it; another process only when its line is not the main process's (raised on
    that rank alone, or a different one), so none is ever swallowed. `every_rank`: known to be
    raised alike on every process. `show`: prints the error instead of `line` (click's usage
    text around it). Returns whether it was raised alike (every process is stopping here)."""
    show = show or (lambda: to_stderr(line))
    main = _is_main_process()
    if main:
        show()
    alike = every_rank or _raised_alike(line)
    if not main and not alike:
        show()
    return alike


# How long a process waits for the others: to compare the error each raised (one that raised
# alone prints its line this much later), and in the barrier before the group ends (the main
# process may still be uploading to the Hub; after the wait each process ends its group anyway).
ALIKE_WAIT_S = 10.0
BARRIER_WAIT_S = 300.0


def end_process_group(every_rank_here: bool = False) -> None:
    """Destroy torch.distributed's default group, if one is up, while the interpreter is whole.
    `every_rank_here`: every process is known to call this too (the run ended, or all raised the
    same error): first wait for them, so that none tears down while a peer is still in the last
    collective. Never imports torch (a command that refused its flags before importing it has no
    group).

    Left to the interpreter's exit, gloo's worker threads outlive Python: under torchrun a rank
    died of SIGABRT ("terminate called without an active exception", exit -6) after a run that
    succeeded, 2 runs in 8 on 2 busy cores. gdb: a `pt_gloo_runloop` thread freed the last
    broadcast's work (on_main's answer) after `Py_FinalizeEx` began; its tensors' Python objects
    need the GIL, a finalizing interpreter ends such a thread with pthread_exit, and the unwind
    through a noexcept destructor calls std::terminate. `destroy_process_group` alone did not
    stop those threads: see `_release_stale_defaults`."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if every_rank_here and dist.get_world_size() > 1:
        _bounded_barrier(dist)
    group = dist.distributed_c10d._get_default_group()
    dist.destroy_process_group()
    _release_stale_defaults(group)
    del group  # the last reference: ProcessGroupGloo's destructor joins its worker threads now


def _bounded_barrier(dist: Any) -> None:
    """A barrier that cannot hang, on gloo (the worker threads above are gloo's): its
    monitored_barrier gives up after BARRIER_WAIT_S (a peer that left or failed first only costs
    the wait; that peer said why). None on NCCL, whose barrier's timeout is its watchdog taking
    the process down, not an exception."""
    from datetime import timedelta

    if dist.get_backend() != "gloo":
        return
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=BARRIER_WAIT_S))
    except Exception:  # ending anyway; the peer's own line says what went wrong
        pass


def _release_stale_defaults(group: Any) -> None:
    """Drop the default arguments that still hold the destroyed `group`.

    torch.distributed.nn.functional binds `group=group.WORLD` as a default argument of ten
    functions when it is imported; transformers imports it (through torch.distributed._shard)
    after accelerate made the group, so those defaults kept the destroyed ProcessGroupGloo and
    its worker threads alive until the interpreter's exit (10 references left after
    `destroy_process_group`, the threads still running). With them set to None (the default
    group, as the functions document) the group is freed when its last reference goes."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("torch.distributed") or module is None:
            continue
        for fn in list(vars(module).values()):  # type(), not isinstance: no deprecated attribute warns
            if type(fn) is types.FunctionType and fn.__defaults__ and any(d is group for d in fn.__defaults__):
                fn.__defaults__ = tuple(None if d is group else d for d in fn.__defaults__)


def _is_main_process() -> bool:
    """Rank 0 of the default group; without one, RANK as a launcher set it (0 alone)."""
    import os

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def _raised_alike(line: str) -> bool:
    """Whether every process stops with this same line (a check each makes on the same input).
    Each process leaves its line in the launch's key-value store and waits up to ALIKE_WAIT_S
    for the others'. The store, not a collective: a process that raised alone finds no peer
    in a collective, and a store read times out. False without a store, or on any doubt."""
    try:
        peers = _peer_store()
        if peers is None:
            return False
        store, rank, world = peers
        from datetime import timedelta

        keys = [f"kto/error-line/{r}" for r in range(world)]
        store.set(keys[rank], line)
        store.wait(keys, timedelta(seconds=ALIKE_WAIT_S))
        return all(store.get(key).decode() == line for key in keys)
    except Exception:  # a peer that never raised (timeout), or the store gone: say it here
        return False


def _peer_store() -> tuple[Any, int, int] | None:
    """The key-value store this launch's processes share, with this rank and their number:
    the default group's; before a group exists (a flag refused at start-up), the store of
    torchrun's agent, which `accelerate launch` also starts, reached as torch's env://
    rendezvous reaches it. None for one process, or under a launcher without that store (each
    process then prints its own line)."""
    import os

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        if dist.get_world_size() == 1:
            return None
        return dist.distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size()
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world == 1 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    import torch.distributed as dist  # the error path under a launcher only

    client = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, False, timeout=timedelta(seconds=ALIKE_WAIT_S))
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted launch must not read the last one's lines
    return dist.PrefixStore(f"kto/before-group/{attempt}", client), int(env["RANK"]), world


def on_main(fn: Callable[[], T], state: Any) -> T:
    """Run `fn` on the main process only and hand its result, or its InputError, to every rank,
    so that all ranks go on together or all stop with the same line (a rank that stopped alone
    would leave the others waiting in the next collective). The other ranks wait here meanwhile.

    `state`: an accelerate `Accelerator` or `PartialState` (is_main_process, num_processes).
    kto-precompute (taking --out) and kto-train (taking --out, choosing the checkpoint) share it.
    """
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list  # only with several processes

    box = [None, None]
    if state.is_main_process:
        try:
            box[0] = fn()
        except InputError as exc:
            box[1] = str(exc)
    broadcast_object_list(box, from_process=0)
    if box[1] is not None:
        raise InputError(box[1], every_rank=True)  # the main process prints it; the other ranks exit alike, silently
    return box[0]
