"""The progress bar's elapsed, s/it and ETA are wall time, evals and checkpoint saves included,
while a window's tokens/s is the steps' alone.

Seen: a bar whose clock stood still during evals showed the steps' own s/it; an operator who
sized a SLURM time limit from its ETA undershot ~3x with regular evals. tqdm reads its clock from
`tqdm.std.time`; each test replaces it (and the loop's perf_counter) with a fake clock that the
steps, evals and saves move on by set amounts, so nothing here depends on how long anything
really takes."""

from __future__ import annotations

import io

import pytest
from conftest import metrics, run_train


@pytest.fixture
def clock(monkeypatch):
    import tqdm.std

    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    return now


def test_the_rate_is_steps_over_wall_time(clock):
    """2 steps of 0.5 s, a 100 s eval, 2 steps of 0.5 s: 102 s for 4 steps, 25.5 s/it, and the
    2 steps left (of 6) at that rate: 51 s."""
    from kto.train.progress import TrainProgress

    progress = TrainProgress(total=6, done=0, enabled=True, stream=io.StringIO())
    for _ in range(2):
        clock[0] += 0.5
        progress.step()
    clock[0] += 100.0  # an eval
    for _ in range(2):
        clock[0] += 0.5
        progress.step()
    shown = progress.bar.format_dict
    assert shown["elapsed"] == pytest.approx(102.0) and shown["rate"] is None  # no smoothing: n / elapsed
    meter = progress.bar.format_meter(**shown)
    assert "25.50s/it" in meter and "01:42<00:51" in meter, meter
    progress.bar.close()


def test_the_loop_times_evals_and_saves_on_the_bar_not_in_tokens_per_s(clock, tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path, monkeypatch):
    """Each step moves both clocks 1 s on, each eval and each save 1000 s: the bar shows 4 steps,
    4 evals and 2 saves (6004 s); each line's tokens/s is its step's tokens over 1 s."""
    import kto.train.loop as loop
    from kto.train.policy import Policy

    bars = []
    perf = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: perf[0])

    class Kept(loop.TrainProgress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self.bar)

        def step(self) -> None:
            clock[0] += 1.0
            perf[0] += 1.0
            super().step()

    def slow(original):
        def run(*args, **kwargs):
            clock[0] += 1000.0
            perf[0] += 1000.0
            return original(*args, **kwargs)

        return run

    monkeypatch.setattr(loop, "TrainProgress", Kept)
    monkeypatch.setattr(loop, "run_eval", slow(loop.run_eval))
    monkeypatch.setattr(Policy, "save", slow(Policy.save))
    args = ("--batch-size", "2", "--max-steps", "4", "--log-every", "1", "--eval-cache", str(tiny_eval_cache), "--eval-every", "1", "--save-every", "2")
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *args)
    assert result.exit_code == 0, result.output
    assert bars[0].format_dict["elapsed"] == pytest.approx(4 + 6 * 1000.0)
    train = [m for m in metrics(tmp_path / "run") if m["split"] == "train"]
    assert len(train) == 4 and all(1.0 <= m["tokens_per_s"] < 1000.0 for m in train), [m["tokens_per_s"] for m in train]
