"""kto-train on 2 gloo processes under torchrun, through the Python API and through the CLI.

Starting torchrun and importing torch in each process costs most of a launch's time, so one
uninterrupted 2-process run (`kto.train.run` on every rank) is what the test checks: the API's
result on each rank, the metrics counted over both ranks, and a SIGTERM-stopped CLI run resumed
under the same launcher."""

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
from test_progress import SLOWED, read_until

pytestmark = pytest.mark.distributed

# The uninterrupted run: kto-train's flags, and the same settings as the API's keywords.
CLI_ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--warmup-ratio", "0.2", "--max-steps", "8"]
SCRIPT = """
    import json, sys
    from pathlib import Path
    import kto.train
    from kto.train.config import TrainConfig

    cache, model, out, eval_cache = sys.argv[1:5]
    config = TrainConfig(
        cache=Path(cache), model=model, out=Path(out), eval_cache=Path(eval_cache),
        batch_size=2, lr=1e-3, log_every=1, warmup_ratio=0.2, max_steps=8,
    )
    result = kto.train.run(config)
    from accelerate import PartialState

    rank = PartialState().process_index
    Path(out, f"result-{rank}.json").write_text(json.dumps({"final": str(result.final), "steps": result.steps, "metrics": result.metrics}))
"""


def run_api_script(tiny_cache, tiny_eval_cache, tiny_model_dir, root: Path) -> Path:
    """A script calling kto.train.run, under torchrun on 2 processes: 8 steps, then eval."""
    root.mkdir(parents=True, exist_ok=True)
    script = root / "train_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = root / "run"
    torchrun(str(script), str(tiny_cache), str(tiny_model_dir), str(out), str(tiny_eval_cache))
    return out


def check_api_result(api_run: Path) -> None:
    """Distributed use: each rank calls kto.train.run and gets the same result, that of metrics.jsonl."""
    results = [json.loads((api_run / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1]
    assert results[0]["final"] == str(api_run / "final") and results[0]["steps"] == 8
    last_train = [m for m in metrics(api_run) if m["split"] == "train"][-1]
    assert results[0]["metrics"] == {k: v for k, v in last_train.items() if k not in ("step", "split")}
    assert Path(results[0]["final"], "model.safetensors").is_file()


def check_metrics_counted_over_ranks(api_run: Path) -> None:
    train_lines = [m for m in metrics(api_run) if m["split"] == "train"]
    # 2 ranks × batch 2 = 4 rows per step, counted over both ranks.
    assert [m["count/chosen"] + m["count/rejected"] for m in train_lines] == [4] * 8
    evals = [m for m in metrics(api_run) if m["split"] == "eval"]
    assert len(evals) == 1 and evals[0]["count/chosen"] + evals[0]["count/rejected"] == 16  # every eval row once


def test_api_under_torchrun_counts_over_ranks_and_a_sigterm_stopped_run_resumes_exactly(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    """One test, so that the one uninterrupted 2-process run is made once (pytest-xdist may put a
    module's tests on both workers, and a module fixture would then be made twice).
    The API run: each rank gets the same result, and the metrics are counted over both ranks.
    Then torchrun forwards SIGTERM to its workers; the main process decides, both ranks save
    (one whole checkpoint, DDP) after the same step, and a resume under torchrun gives the
    losses of the uninterrupted run."""
    api_run = run_api_script(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path / "api")
    check_api_result(api_run)
    check_metrics_counted_over_ranks(api_run)
    script = tmp_path / "slowed.py"
    script.write_text(SLOWED)
    common = ["--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--eval-cache", str(tiny_eval_cache), *CLI_ARGS]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script)]
    env = {**os.environ, "STEP_SLEEP_S": "0.5", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stopped"
    proc = subprocess.Popen([*launch, *common, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        read_until(proc, "step 1/8 ")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    stopped = re.findall(r"stopped by SIGTERM after step (\d+) of 8: saved (\S+)", err)
    assert len(stopped) == 1, err[-3000:]  # said once, by the main process
    step = int(stopped[0][0])
    assert 1 <= step < 8 and "resume with (under the same launcher, 2 processes): kto-train " in err
    assert [m["step"] for m in metrics(out)] == list(range(1, step + 1))
    env["STEP_SLEEP_S"] = "0"
    done = subprocess.run([*launch, *common, "--out", str(out), "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for a, b in zip(metrics(out), metrics(api_run), strict=True):
        assert a["split"] == b["split"] and a.keys() == b.keys()
        keys = ("step", "loss", "kl", "rewards/chosen", "rewards/rejected") + (("lr", "grad_norm") if a["split"] == "train" else ())
        for key in keys:
            assert a[key] == b[key], (a["step"], a["split"], key)
