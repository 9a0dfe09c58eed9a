"""formats/errors.py under 2 gloo processes (started as torchrun starts them, as two processes
of the test's own, so that each rank's stderr and exit status can be read): an error line is
printed once for the user, never swallowed, and the group is freed before the interpreter
exits (a gloo worker thread left running then killed a rank with SIGABRT, exit -6)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

SCRIPT = """
    import os, sys
    from accelerate import PartialState
    from kto.formats.errors import InputError, end_process_group, on_main, one_line_errors

    @one_line_errors("kto-test")
    def main(mode):
        state = PartialState(cpu=True)  # the gloo group, from the launcher's environment
        assert state.num_processes == 2
        rank = state.process_index
        if mode == "on_main":
            on_main(lambda: (_ for _ in ()).throw(InputError("refused by the main process")), state)
        if mode == "alike":
            raise InputError("refused alike on every rank")
        if mode == "rank_1_alone" and rank == 1:
            raise InputError("refused on rank 1 alone")
        if mode == "threads":
            on_main(lambda: "answer", state)
            import torch.distributed.nn.functional  # binds the live group as default arguments (transformers does)
            end_process_group(every_rank_here=True)
            names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
            print("gloo threads left:", sum(n.startswith(("pt_gloo", "gloo")) for n in names), file=sys.stderr)

    from pathlib import Path
    main(sys.argv[1])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(script: Path, mode: str) -> list[subprocess.CompletedProcess]:
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", GROUP_RANK="0")
        procs.append(subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("errors") / "two.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return path


def lines(procs: list[subprocess.CompletedProcess]) -> list[str]:
    """The error lines a user reads in the launcher's merged stderr."""
    return [line for p in procs for line in p.stderr.splitlines() if line.startswith("kto-test: error:")]


@pytest.mark.parametrize(("mode", "says"), [("on_main", "refused by the main process"), ("alike", "refused alike on every rank")])
def test_an_error_every_rank_raises_is_printed_once_by_the_main_process(script: Path, mode: str, says: str) -> None:
    procs = two_ranks(script, mode)
    assert [p.returncode for p in procs] == [2, 2], [p.stderr[-2000:] for p in procs]
    assert lines(procs) == [f"kto-test: error: {says}"] and says in procs[0].stderr
    assert not any("Traceback" in p.stderr or "terminate called" in p.stderr for p in procs)


def test_an_error_raised_on_a_non_main_rank_alone_is_printed_there(script: Path) -> None:
    procs = two_ranks(script, "rank_1_alone")
    assert procs[1].returncode == 2 and procs[0].returncode == 0, [p.stderr[-2000:] for p in procs]
    assert lines(procs) == ["kto-test: error: refused on rank 1 alone"] and "rank 1 alone" in procs[1].stderr


def test_ending_the_group_stops_gloos_threads_though_a_module_still_named_it(script: Path) -> None:
    """torch.distributed.nn.functional, imported after the group was made, held it in default
    arguments: destroy_process_group left its worker threads running into the interpreter's
    exit, where one freeing the last broadcast aborted the process now and then."""
    procs = two_ranks(script, "threads")
    for p in procs:
        assert p.returncode == 0 and "gloo threads left: 0" in p.stderr, p.stderr[-2000:]
