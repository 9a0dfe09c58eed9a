"""A stop signal while kto-train uploads final/ with --push-to-hub (found by an operations hunt).

The loop's StopSignals gives the signals back when it ends, so during the upload (minutes on a
real model) SIGTERM ended the process with 143 and SIGHUP with 129, nothing printed, and SIGINT
said only `kto-train: interrupted`: not that final/ is complete, nor how to push it. Now one
line says both (train/stop.py stoppable_push), with the exit status of the other stops.

Each test puts a handler of its own in for the signal first, as a host program's (the handler
from before kto-train, which StopSignals puts back): without the fix the signal reaches it, and
the test fails on its RuntimeError instead of ending pytest."""

from __future__ import annotations

import dataclasses
import shlex
import signal

import pytest
from click.testing import CliRunner
from conftest import run_train
from hub_server import FakeHub, point_at

import kto.train
from kto.train.cli import main
from kto.train.config import TrainConfig
from kto.train.stop import PushInterrupted

TRAIN = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "2", "--save-every", "2"]
MODEL_FILES = {"model.safetensors", "config.json", "README.md"}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake hub, huggingface_hub pointed at it (as tests/formats/test_hub_push_pull.py does)."""
    with FakeHub() as server:
        point_at(monkeypatch, server.url, tmp_path)
        yield server


@pytest.fixture
def host_handlers():
    """Every stop signal's handler from before kto-train raises (see the module's docstring);
    the originals are put back after the test."""

    def host(signum: int, frame: object) -> None:
        raise RuntimeError(f"{signal.Signals(signum).name} reached the handler from before kto-train")

    saved = {s: signal.signal(s, host) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield host
    for s, handler in saved.items():
        signal.signal(s, handler)


def signal_the_upload(monkeypatch, signum: int) -> None:
    """The next HfApi.upload_folder gets `signum` as it starts, then uploads as it would; later
    ones only upload."""
    import os

    from huggingface_hub import HfApi

    real, due = HfApi.upload_folder, [signum]

    def upload_folder(self, *args, **kwargs):
        if due:
            os.kill(os.getpid(), due.pop())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def model_files(hub: FakeHub, repo: str) -> set[str]:
    return set(hub.repos[("model", repo)].files)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_the_push_says_final_is_complete_and_the_command_it_prints_pushes_it(
    hub, host_handlers, tiny_cache, tiny_model_dir, tmp_path, monkeypatch, signum
):
    out, name = tmp_path / "run", signal.Signals(signum).name
    signal_the_upload(monkeypatch, signum)
    result = run_train(tiny_cache, tiny_model_dir, out, *TRAIN, "--push-to-hub", "me/policy")
    assert result.exit_code == 128 + signum, result.output
    line = result.output.strip().splitlines()[-1]
    head = f"kto-train: stopped by {name} while pushing {out / 'final'} to me/policy on the Hub; {out / 'final'} is complete: push it with: "
    assert line.startswith(head), result.output
    assert "no step was trained" not in result.output and "Traceback" not in result.output
    assert (out / "final" / "model.safetensors").is_file() and not model_files(hub, "me/policy") & MODEL_FILES

    # The advice holds: the printed command trains nothing and pushes final/ whole.
    command = shlex.split(line.removeprefix(head))
    assert command[:1] == ["kto-train"] and command[-1] == "--resume" and "--push-to-hub" in command
    pushed = CliRunner().invoke(main, command[1:])
    assert pushed.exit_code == 0, pushed.output
    assert "finished all 2 steps (final/ holds step 2); nothing to do" in pushed.output
    assert hub.repos[("model", "me/policy")].files["model.safetensors"] == (out / "final" / "model.safetensors").read_bytes()
    assert MODEL_FILES <= model_files(hub, "me/policy")


def test_the_python_api_raises_push_interrupted_on_ctrl_c_and_gives_sigint_back(hub, host_handlers, tiny_cache, tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Through kto.train.run a Ctrl-C during the upload raised a bare KeyboardInterrupt out of
    huggingface_hub (the host's SIGINT handler was back): now PushInterrupted, an Interrupted as
    the loop's stop is, saying final/ is complete and how to push it, the host's handler back after."""
    out = tmp_path / "run"
    config = TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=out, batch_size=2, lr=1e-3, max_steps=2, push_to_hub="me/policy")
    signal_the_upload(monkeypatch, signal.SIGINT)
    with pytest.raises(PushInterrupted) as caught:
        kto.train.run(config)
    exc = caught.value
    assert exc.exit_code == 130 and exc.checkpoint == out / "final" and exc.command.endswith("--push-to-hub me/policy --resume")
    assert str(exc).startswith(
        f"stopped by SIGINT while pushing {out / 'final'} to me/policy on the Hub; {out / 'final'} is complete: push it with: kto-train "
    )
    assert str(exc).endswith("--resume (kto.train.run: the same TrainConfig with resume=True)")
    assert f"kto-train: {str(exc).removesuffix(' (kto.train.run: the same TrainConfig with resume=True)')}\n" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is host_handlers and signal.getsignal(signal.SIGTERM) is host_handlers
    assert (out / "final" / "model.safetensors").is_file() and not model_files(hub, "me/policy") & MODEL_FILES

    result = kto.train.run(dataclasses.replace(config, resume=True))  # as the message says
    assert result.final == out / "final" and MODEL_FILES <= model_files(hub, "me/policy")
