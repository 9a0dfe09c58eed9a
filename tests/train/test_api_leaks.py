"""`kto.train.run` in a notebook or a sweep leaves the caller's process as it found it: its
random generators (the run seeds torch with --seed) and, when a run raises mid-training, no
metrics.jsonl left open nor a tracker's writer thread left running."""

import random
import threading

import numpy as np
import pytest
import torch
from conftest import metrics, plant_lr

import kto.train
from kto.formats.errors import InputError
from kto.train import loop
from kto.train.config import TrainConfig
from kto.train.metrics import MetricsWriter

ARGS = {"batch_size": 2, "lr": 1e-3, "log_every": 1, "max_steps": 1}


def generator_states() -> tuple:
    return torch.initial_seed(), torch.get_rng_state(), random.getstate(), np.random.get_state()


def assert_same_states(before: tuple, after: tuple) -> None:
    assert after[0] == before[0] and torch.equal(after[1], before[1])
    assert after[2] == before[2]
    assert all(np.array_equal(a, b) for a, b in zip(after[3][1:], before[3][1:], strict=True))


@pytest.mark.parametrize("outcome", ["trained", "bad input"])
def test_run_gives_the_callers_random_generators_back(tiny_cache, tiny_model_dir, tmp_path, outcome):
    torch.manual_seed(1234)
    random.seed(5)
    np.random.seed(7)
    torch.rand(3), random.random(), np.random.rand()  # a generator part way through its stream
    before = generator_states()
    cache = tiny_cache if outcome == "trained" else tmp_path / "no-cache"
    cfg = TrainConfig(cache=cache, model=str(tiny_model_dir), out=tmp_path / "run", seed=0, keep_dropout=True, **ARGS)
    if outcome == "trained":
        kto.train.run(cfg)
    else:
        with pytest.raises(InputError, match="no-cache"):
            kto.train.run(cfg)
    assert_same_states(before, generator_states())


def test_the_runs_numbers_do_not_depend_on_the_callers_generators(tiny_cache, tiny_model_dir, tmp_path):
    """The run still draws from --seed (dropout here), whatever the caller's generator holds."""
    losses = []
    for k, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        cfg = TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=tmp_path / f"run{k}", keep_dropout=True, **{**ARGS, "max_steps": 2})
        losses.append(kto.train.run(cfg).metrics["loss"])
    assert losses[0] == losses[1]


@pytest.fixture
def writers(monkeypatch) -> list[MetricsWriter]:
    """Every MetricsWriter the run opens."""
    made, init = [], MetricsWriter.__init__

    def recording(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(MetricsWriter, "__init__", recording)
    return made


def interrupt_after_step_2(original):
    def after_step(run, *args):
        window = original(run, *args)
        if run.position.global_step == 2:
            raise KeyboardInterrupt  # a second Ctrl-C: no checkpoint, the run just ends
        return window

    return after_step


@pytest.mark.parametrize("failure", ["nan gradient", "keyboard interrupt"])
def test_a_run_that_raises_mid_training_closes_its_records(tiny_cache, tiny_model_dir, tmp_path, writers, monkeypatch, failure):
    """Before, metrics.jsonl stayed open while the exception was referenced, and TensorBoard's
    writer thread ran for the rest of the process: only a finished or signal-stopped run closed them."""
    pytest.importorskip("tensorboard")
    threads = set(threading.enumerate())
    out = tmp_path / "run"
    cfg = TrainConfig(cache=tiny_cache, model=str(tiny_model_dir), out=out, report_to="tensorboard", **{**ARGS, "max_steps": 4})
    if failure == "nan gradient":
        # A rate of 1e8 planted in the optimizer (--lr above 1 is refused before any work).
        cfg = TrainConfig(**{**vars(cfg), "max_grad_norm": 0.0})
        plant_lr(monkeypatch, 1e8)
        expected, written = pytest.raises(InputError, match="step 2: the gradient norm is nan"), [1]
    else:
        monkeypatch.setattr(loop, "after_step", interrupt_after_step_2(loop.after_step))
        expected, written = pytest.raises(KeyboardInterrupt), [1, 2]
    with expected:
        kto.train.run(cfg)
    assert len(writers) == 1 and writers[0].file.closed
    assert [m["step"] for m in metrics(out)] == written  # what was written stays
    assert not [t for t in threading.enumerate() if t not in threads and t.is_alive()]


def test_a_record_that_fails_to_close_after_a_failure_is_logged_not_raised(capfd):
    """The run's own exception is the one the caller sees; the other records still close."""
    from types import SimpleNamespace

    from kto.train.metrics import close_after_failure

    finished = []

    def full_disk():
        raise OSError(28, "No space left on device")

    tracker = SimpleNamespace(finish=lambda: finished.append(True))
    close_after_failure(SimpleNamespace(close=full_disk), SimpleNamespace(trackers=[tracker]))
    assert finished == [True]
    assert "warning: closing the run's records after it failed: OSError: [Errno 28] No space left on device" in capfd.readouterr().err
