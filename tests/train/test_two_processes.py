"""kto-train on 2 gloo processes under torchrun, through the Python API and through the CLI.

Starting torchrun and importing torch in each process costs most of a launch's time, so the
module makes three launches, in one test (pytest-xdist would make a module fixture on each worker
that takes one of its tests): two CLI runs stopped by a signal (SIGTERM, a full fine-tune; SIGUSR1,
LoRA with dropout), then one script that calls `kto.train.run` four times: the resume of the
SIGTERM-stopped run (the first run of a fresh launch, as after a crash), the uninterrupted run it
must equal, then the same two for the LoRA run. The first uninterrupted call checks the API's
result on each rank and the metrics counted over both ranks, and that a script may call the API
again after a run in the same launch (the group the first run made serves the later ones)."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import metrics, torchrun
from test_progress import SLOWED, signal_after

pytestmark = pytest.mark.distributed

# The stopped run's kto-train flags, and the same settings as the API's keywords (kto_run.json
# refuses a resume whose settings differ from the stopped run's).
CLI_ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--warmup-ratio", "0.2", "--max-steps", "8"]
SCRIPT = """
    import json, os, sys
    from pathlib import Path
    import kto.train
    from kto.train.config import TrainConfig

    cache, model, eval_cache, pairs = sys.argv[1:5]
    for stopped, out, extra in json.loads(pairs):
        settings = dict(cache=Path(cache), model=model, eval_cache=Path(eval_cache), batch_size=2, lr=1e-3, log_every=1, warmup_ratio=0.2, max_steps=8)
        settings.update(extra)
        kto.train.run(TrainConfig(out=Path(stopped), resume=True, **settings))  # the first pair's: as after a crash
        result = kto.train.run(TrainConfig(out=Path(out), **settings))  # the uninterrupted run, in the same process
        rank = os.environ["RANK"]
        Path(out, f"result-{rank}.json").write_text(json.dumps({"final": str(result.final), "steps": result.steps, "metrics": result.metrics}))
"""


def stop_a_cli_run(tiny_cache, tiny_eval_cache, tiny_model_dir, out: Path, *extra: str, signum: int = signal.SIGTERM, launcher: tuple[str, ...] = ()) -> int:
    """kto-train under torchrun (`launcher`: its own flags), slowed, stopped by `signum` after its
    first step: torchrun forwards the signal to its workers, the main process decides, both ranks
    save (one whole checkpoint, DDP) after the same step. Returns that step."""
    script = out.parent / "slowed.py"
    script.write_text(SLOWED)
    common = ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--eval-cache", str(tiny_eval_cache), *CLI_ARGS, *extra]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *launcher, str(script)]
    env = {**os.environ, "STEP_SLEEP_S": "0.5", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*launch, *common, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err = signal_after(proc, "step 1/8 ", signum)
    stopped = re.findall(rf"stopped by {signal.Signals(signum).name} after step (\d+) of 8: saved (\S+)", err)
    assert len(stopped) == 1, err[-3000:]  # said once, by the main process
    step = int(stopped[0][0])
    assert 1 <= step < 8 and "resume with (under the same launcher, 2 processes): kto-train " in err
    assert [m["step"] for m in metrics(out)] == list(range(1, step + 1))
    return step


def resume_then_run_uninterrupted(tiny_cache, tiny_eval_cache, tiny_model_dir, pairs: list[tuple[Path, dict]], root: Path) -> tuple[list[Path], str]:
    """SCRIPT under torchrun on 2 processes, once for all `pairs` (a stopped run's directory, and
    its TrainConfig keywords beyond the common ones, as its extra flags); returns the
    uninterrupted runs' directories, in the order of `pairs`, and the log."""
    root.mkdir(parents=True, exist_ok=True)
    script = root / "train_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    outs = [root / f"run-{i}" for i in range(len(pairs))]
    plan = json.dumps([(str(stopped), str(out), extra) for (stopped, extra), out in zip(pairs, outs, strict=True)])
    log = torchrun(str(script), str(tiny_cache), str(tiny_model_dir), str(tiny_eval_cache), plan, timeout=600).stderr
    return outs, log


def check_api_result(api_run: Path) -> None:
    """Distributed use: each rank calls kto.train.run and gets the same result, that of metrics.jsonl."""
    results = [json.loads((api_run / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]
    assert results[0]["final"] == str(api_run / "final") and results[0]["steps"] == 8
    last_train = [m for m in metrics(api_run) if m["split"] == "train"][-1]
    assert results[0]["metrics"] == {k: v for k, v in last_train.items() if k not in ("step", "split", "eval_cache")}  # eval_cache: eval lines' own
    assert Path(results[0]["final"], "model.safetensors").is_file()


def check_metrics_counted_over_ranks(api_run: Path) -> None:
    train_lines = [m for m in metrics(api_run) if m["split"] == "train"]
    # 2 ranks × batch 2 = 4 rows per step, counted over both ranks.
    assert [m["count/chosen"] + m["count/rejected"] for m in train_lines] == [4] * 8
    evals = [m for m in metrics(api_run) if m["split"] == "eval"]
    assert len(evals) == 1 and evals[0]["count/chosen"] + evals[0]["count/rejected"] == 16  # every eval row once


def test_stopped_runs_resume_exactly_and_the_api_runs_again_under_torchrun(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    """One test, so that pytest-xdist makes its three launches once (module docstring).

    SIGTERM: the resumed run gives the losses of the uninterrupted one, made after it in the same
    process (before, the resume's `end_training` left accelerate counting 2 processes with no
    process group, and the second call failed).

    LoRA with dropout on 2 processes: each rank's generator moves with its own batches, so the
    checkpoint keeps every rank's. Before, rng.pt held rank 0's alone, every rank resumed from
    it, and the first step after the resume already differed (loss 0.49992 against 0.49981).

    SIGUSR1 (it stops the LoRA run): SLURM's `--signal=USR1@120` under torchrun, which forwards
    SIGUSR1 only when --signals-to-handle names it (torch 2.13's default: SIGTERM, SIGINT, SIGHUP,
    SIGQUIT). Each rank notes it, the main process decides, both stop after the same step (one
    line, one checkpoint, nothing hangs). Seen failing before: the workers died of it at once."""
    stopped, lora = tmp_path / "stopped", tmp_path / "stopped-lora"
    step = stop_a_cli_run(tiny_cache, tiny_eval_cache, tiny_model_dir, stopped)
    handle = ("--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    lora_step = stop_a_cli_run(
        tiny_cache, tiny_eval_cache, tiny_model_dir, lora, "--lora-r", "4", "--lora-dropout", "0.3", "--keep-dropout", signum=signal.SIGUSR1, launcher=handle
    )
    assert sorted(p.name for p in lora.glob("checkpoint-*")) == [f"checkpoint-{lora_step}"]
    pairs = [(stopped, {}), (lora, {"lora_r": 4, "lora_dropout": 0.3, "keep_dropout": True})]
    (api_run, lora_run), log = resume_then_run_uninterrupted(tiny_cache, tiny_eval_cache, tiny_model_dir, pairs, tmp_path / "api")
    resumed = re.findall(r"^resumed from (\S+) at step (\d+)$", log, re.MULTILINE)
    assert resumed == [(str(stopped / f"checkpoint-{step}"), str(step)), (str(lora / f"checkpoint-{lora_step}"), str(lora_step))], log[-3000:]
    check_api_result(api_run)
    check_metrics_counted_over_ranks(api_run)
    assert_same_metrics(stopped, api_run)
    assert_same_metrics(lora, lora_run)


def assert_same_metrics(resumed: Path, uninterrupted: Path) -> None:
    for a, b in zip(metrics(resumed), metrics(uninterrupted), strict=True):
        assert a["split"] == b["split"] and a.keys() == b.keys()
        keys = ("step", "loss", "kl", "rewards/chosen", "rewards/rejected") + (("lr", "grad_norm") if a["split"] == "train" else ())
        for key in keys:
            assert a[key] == b[key], (a["step"], a["split"], key)
