"""How the three commands end (formats/errors.one_line_errors): an InputError is one line and
exit 2, a Ctrl-C no handler notes is exit 130, and either ends the process group a launcher
made the process join."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from kto.formats.errors import InputError, one_line_errors


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("raised", "status", "line"), [(InputError("--out o: bad"), 2, "prog: error: --out o: bad"), (KeyboardInterrupt(), 130, "prog: interrupted")]
)
def test_a_command_ends_with_its_status_line_and_its_process_group(process_group, capsys, raised, status, line):
    """Left to the interpreter's exit, the gloo group's threads sometimes aborted a rank that had
    refused a flag (SIGABRT, exit -6 under torchrun); click turned a second Ctrl-C into exit 1."""

    @one_line_errors("prog")
    def command():
        raise raised

    with pytest.raises(SystemExit) as exit_:
        command()
    assert exit_.value.code == status and capsys.readouterr().err == line + "\n"
    assert not dist.is_initialized()
