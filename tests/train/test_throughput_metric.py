"""tokens_per_s: the tokens a step's passes ran, over the time the steps took (not evals or saves)."""

import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from conftest import OneProcess, metrics, run_train


@pytest.mark.parametrize(("loss", "with_kl"), [("kto", True), ("apo_zero_unpaired", False)])
@pytest.mark.parametrize("share", [False, True])
def test_tokens_count_the_kl_pass_only_when_one_ran(tiny_cache, tiny_model_dir, loss, with_kl, share):
    """Seen: --loss apo_zero_unpaired logged about twice its throughput, counting the KL
    sequences of a KL pass it never runs. The count is the tokens the rows hold (prefix sharing
    or not: what it saved is `tokens/saved`), policy sequences plus, with a KL pass, KL ones;
    the filler row (-1) counts nowhere."""
    from kto.formats.cache import open_cache
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.sources import resolve_source
    from kto.train.data import collate_micro_batch
    from kto.train.loss import LossType
    from kto.train.step import LossSettings, forward_backward

    cache = open_cache(tiny_cache)
    model = CompletionLogps(load_causal_lm(resolve_source(str(tiny_model_dir)), dtype=torch.float32))
    batches = [collate_micro_batch(cache, np.array(rows), pad_id=0) for rows in ([0, 1], [2, -1])]
    settings = LossSettings(0.1, 1.0, 1.0, LossType(loss), 0.0, "step", kl_prefix_sharing=share, policy_prefix_sharing=share)
    stats = forward_backward(model, batches, settings, OneProcess())
    rows = cache_rows(tiny_cache)[:3]
    policy = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows)
    kl = sum(len(r["prompt_ids"]) + len(r["kl_completion_ids"]) for r in rows)
    assert policy > 0 and kl > 0
    assert float(stats.tokens) == policy + (kl if with_kl else 0)
    # Rows 0 and 1 share a prompt: the shared KL pass computed fewer tokens, and the count is the same.
    assert (float(stats.saved_tokens) > 0) == (share and with_kl)


def cache_rows(cache_dir) -> list[dict]:
    """The cache's rows in order, read with polars as a user reads them (not the step's reader)."""
    import polars as pl

    return pl.concat([pl.read_ipc(p) for p in sorted(cache_dir.glob("shard-*.arrow"))]).to_dicts()


@pytest.mark.parametrize(
    ("flags", "paused"), [(["--log-every", "1", "--eval-every", "2", "--save-every", "3"], "between"), (["--log-every", "2", "--eval-every", "1"], "inside")]
)
def test_a_window_does_not_time_the_evals_and_saves_after_its_steps(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path, monkeypatch, flags, paused):
    """Seen: with --log-every 1 --eval-every 2 the line after each eval logged ~120 tokens/s
    against ~3000 elsewhere: the next window's clock started before the eval ran. Each eval and
    each save here moves the clock 1000 s on (time.perf_counter, which the loop reads), so a
    window that timed one would last over 1000 s; the real steps take well under 100 s.
    `paused` says where they fall: between two windows, or inside one (--log-every 2)."""
    import kto.train.loop as loop
    from kto.train.policy import Policy

    offset = [0.0]
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])

    @dataclass
    class Window(loop.Window):  # Window's own default_factory holds the unpatched clock
        started: float = field(default_factory=lambda: time.perf_counter())

    monkeypatch.setattr(loop, "Window", Window)

    def slow(original):
        def run(*args, **kwargs):
            offset[0] += 1000.0
            return original(*args, **kwargs)

        return run

    monkeypatch.setattr(loop, "run_eval", slow(loop.run_eval))
    monkeypatch.setattr(Policy, "save", slow(Policy.save))
    seconds = []
    log_window = loop.log_window
    monkeypatch.setattr(loop, "log_window", lambda run, window, last, s, progress: (seconds.append(s), log_window(run, window, last, s, progress)))
    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, "--batch-size", "2", "--lr", "1e-3", "--max-steps", "6", "--eval-cache", str(tiny_eval_cache), *flags)
    assert result.exit_code == 0, result.output
    lines = metrics(out)
    assert [m["step"] for m in lines if m["split"] == "eval"] == ([2, 4, 6] if paused == "between" else [1, 2, 3, 4, 5, 6])
    assert offset[0] >= 3000.0  # the evals (and saves) did run under the moved clock
    assert len(seconds) == (6 if paused == "between" else 3)
    assert all(0 < s < 100 for s in seconds), seconds
    rates = [m["tokens_per_s"] for m in lines if m["split"] == "train"]
    assert all(r > 1.0 for r in rates), rates  # tokens over < 100 s, not over > 1000 s
