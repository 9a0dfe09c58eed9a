"""kto-inspect run on a short real kto-train run, and on hand-written metrics files; and
kto-inspect score with that run's final policy."""

import base64
import json
import re
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import kto.formats
from kto.formats.metrics_line import metrics_keys
from kto.inspection.cli import main


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_cache, tiny_eval_cache, tiny_model_dir):
    from kto.train.cli import main as train

    out = tmp_path_factory.mktemp("short-run") / "run"
    args = [
        "--cache",
        tiny_cache,
        "--model",
        tiny_model_dir,
        "--out",
        out,
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--log-every",
        "1",
        "--lr",
        "1e-3",
        "--eval-cache",
        tiny_eval_cache,
        "--eval-every",
        "1",
    ]
    result = CliRunner().invoke(train, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_run_report_from_a_real_run(short_run, tmp_path):
    result = invoke("run", short_run, "--to", tmp_path / "report", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    lines = [json.loads(line) for line in (short_run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    evals = [x for x in lines if x["split"] == "eval"]
    assert (r["train_lines"], r["eval_lines"]) == (len(train), len(evals)) == (2, 2)
    # Every line carries every key, in one order (formats/metrics_line.py); an eval line's
    # train-only nulls are no NON-FINITE metric (r["checks"][0] below is the KL line).
    assert all(list(x) == list(metrics_keys(True)) for x in lines) and evals[0]["lr"] is None
    assert r["warnings"] == []
    assert r["last"]["train"]["loss"] == train[-1]["loss"] and r["last"]["eval"]["kl"] == evals[-1]["kl"]
    names = sorted(p.rsplit("/", 1)[1] for p in r["plots"])
    assert names == sorted(f"{n}.png" for n in ("loss", "kl", "rewards", "logps", "lr", "grad_norm", "tokens_per_s"))
    for p in r["plots"]:
        assert (tmp_path / "report" / p.rsplit("/", 1)[1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "report" / "report.html").read_text()
    # Self-contained: every image is an inline data URI holding the PNG written beside it.
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) == len(r["plots"]) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (tmp_path / "report" / "loss.png").read_bytes()
    assert "http" not in html.replace("http-equiv", "")
    assert r["checks"][0].startswith(f"KL estimate (clamped): 0 at {sum(x['kl'] == 0 for x in train)} of 2 logged steps")


def test_run_text_output_defaults_to_out_report(short_run):
    result = invoke("run", short_run)
    assert result.exit_code == 0, result.output
    assert f"wrote {short_run / 'report' / 'report.html'} and 7 plots" in result.stdout
    assert "checks" in result.stdout and "rewards/margins" in result.stdout


def write_metrics(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def record(step, **kw):
    base = {
        "step": step,
        "split": "train",
        "loss": 0.5,
        "kl": 0.0,
        "kl_raw": -0.01,
        "rewards/chosen": 0.1 * step,
        "rewards/rejected": -0.1 * step,
        "rewards/margins": 0.2 * step,
        "count/chosen": 1.0,
        "count/rejected": 1.0,
        "lr": 1e-6,
        "grad_norm": 1.0,
        "tokens_per_s": 100.0,
    }
    return {**base, **kw}


def test_truncated_last_line_warns_and_uses_complete_lines(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [record(1), record(2)], tail='{"step": 3, "split": "tra')
    result = invoke("run", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    warning = f"{tmp_path / 'metrics.jsonl'}: line 3 is incomplete (the run was cut off mid-write?); using the 2 complete lines"
    assert f"kto-inspect: warning: {warning}" in result.stderr
    r = json.loads(result.stdout)
    assert r["train_lines"] == 2 and r["last"]["train"]["step"] == 2
    assert "KL estimate (clamped): 0 at 2 of 2 logged steps; stuck at 0" in r["checks"][0]
    assert "desirable rewards rose: 0.1 (step 1) -> 0.2 (step 2)" in r["checks"]
    assert "undesirable rewards fell: -0.1 (step 1) -> -0.2 (step 2)" in r["checks"]


def test_steps_without_a_class_are_left_out(tmp_path):
    recs = [record(1, **{"count/chosen": 0.0, "rewards/chosen": 0.0}), record(2), record(3)]
    write_metrics(tmp_path / "metrics.jsonl", recs)
    r = json.loads(invoke("run", tmp_path, "--json").stdout)
    assert "desirable rewards rose: 0.2 (step 2) -> 0.3 (step 3)" in r["checks"]


def test_non_finite_metrics_are_flagged_with_metric_and_step(tmp_path):
    """kto-train writes NaN and inf as null. A null loss or grad_norm is flagged, naming the
    metric and the steps; a class metric of a window without that class is null by design."""
    recs = [
        record(1, **{"count/chosen": 0.0, "rewards/chosen": None, "rewards/margins": None}),  # by design
        record(2, grad_norm=None),
        record(3, loss=None, grad_norm=None),
        {**record(4, split="eval"), "kl": None},
    ]
    write_metrics(tmp_path / "metrics.jsonl", recs)
    result = invoke("run", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)["checks"]
    assert found[0] == (
        "NON-FINITE metrics (NaN or inf, written as null): grad_norm at steps 2, 3; loss at step 3; eval kl at step 4; the run diverged or its cache holds NaN"
    )
    # Python's json also reads the non-standard NaN / Infinity tokens: flagged the same way.
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record(1)) + "\n" + json.dumps(record(2, loss=float("inf"))) + "\n")
    found = json.loads(invoke("run", tmp_path, "--json").stdout)["checks"]
    assert found[0].startswith("NON-FINITE metrics (NaN or inf, written as null): loss at step 2;")
    write_metrics(tmp_path / "metrics.jsonl", [record(1), record(2)])
    assert not any("NON-FINITE" in c for c in json.loads(invoke("run", tmp_path, "--json").stdout)["checks"])


def test_a_run_stopped_before_its_first_line_says_so(tmp_path):
    """Found by a hunt: a run stopped by a NaN at step 1 has kto_run.json and no metrics.jsonl,
    and was asked whether it is a kto-train --out directory at all."""
    (tmp_path / "kto_run.json").write_text(json.dumps({"kind": "kto-train run", "version": 1, "config": {"log_every": 10}, "derived": {}}))
    result = invoke("run", tmp_path)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (
        f"kto-inspect: error: {tmp_path}/metrics.jsonl: no such file: the run has logged no step yet; "
        "it stopped before its first logged step (see its output), or has not reached it yet\n"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "metrics.jsonl: no such file; is {d} a kto-train --out directory?"),
        ("", "metrics.jsonl: no metrics to show (it is empty)"),
        ('{"step": 1, "spl', "metrics.jsonl: no metrics to show (no line is a complete metrics record)"),
    ],
)
def test_missing_or_empty_metrics(tmp_path, content, message):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    result = invoke("run", tmp_path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"kto-inspect: error: {tmp_path}/" + message.format(d=tmp_path))


def test_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    write_metrics(tmp_path / "metrics.jsonl", [record(1)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = invoke("run", tmp_path)
    assert result.exit_code == 2
    assert "pip install 'kto-offline[plot]'" in result.stderr
    assert not (tmp_path / "report").exists()


def test_score_the_final_policy(short_run, tiny_cache, tmp_path):
    out = tmp_path / "scores.parquet"
    result = invoke("score", tiny_cache, "--model", short_run / "final", "--out", out, "--beta", "0.5", "--json")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    scores = pq.read_table(out).to_pydict()
    cache = kto.formats.scan(tiny_cache).collect()
    assert scores["id"] == cache["id"].to_list()  # one row per cached row, in cache order
    assert scores["label"] == cache["label"].to_list()
    assert scores["ref_logp"] == cache["ref_logp"].to_list()
    policy, ref = np.array(scores["policy_logp"]), np.array(scores["ref_logp"])
    assert np.allclose(scores["reward"], 0.5 * (policy - ref), rtol=0, atol=1e-12)
    assert np.abs(policy - ref).max() > 1e-3  # two steps at lr 1e-3 moved the policy
    label = np.array(scores["label"])
    assert r["desirable"] == {
        "rows": 8,
        "gained": int((policy - ref)[label].__gt__(0).sum()),
        "mean_reward": pytest.approx(float(np.mean(np.array(scores["reward"])[label]))),
    }
    assert r["undesirable"]["lost"] == int(((policy - ref)[~label] < 0).sum())
    # The README recipe: join the scores with the cache on id.
    import polars as pl

    joined = kto.formats.scan(tiny_cache).join(pl.scan_parquet(out), on="id").collect()
    assert joined.height == cache.height and (joined["label"] == joined["label_right"]).all()


def test_a_report_into_a_kto_folder_is_refused(short_run, tiny_cache):
    """Seen in an attack: `--to` a cache, the run itself or a checkpoint wrote PNGs that
    kto-precompute and kto-train then refused as foreign files."""
    for folder, marker in ((tiny_cache, "manifest.json"), (short_run, "kto_run.json"), (short_run / "final", "config.json")):
        before = sorted(p.name for p in folder.iterdir())
        result = invoke("run", short_run, "--to", folder)
        assert result.exit_code == 2 and f"--to {folder}: holds {marker}, a kto cache, run, checkpoint or model folder" in result.output
        assert sorted(p.name for p in folder.iterdir()) == before


def test_a_report_replaces_no_file_of_the_users(short_run, tiny_cache, tmp_path):
    """Seen in an attack: `--to photos` replaced the user's loss.png and report.html, and `--to`
    the cache's tokenizer/ wrote PNGs inside the cache. A folder an earlier report wrote is
    replaced, as is the run's own report/."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "loss.png").write_bytes(b"my holiday")
    result = invoke("run", short_run, "--to", photos)
    assert result.exit_code == 2 and f"--to {photos}: holds loss.png, which no kto-inspect run report wrote" in result.output
    assert sorted(p.name for p in photos.iterdir()) == ["loss.png"] and (photos / "loss.png").read_bytes() == b"my holiday"
    inside = tiny_cache / "tokenizer"
    result = invoke("run", short_run, "--to", inside)
    assert result.exit_code == 2 and f"--to {inside}: is inside the cache {tiny_cache}" in result.output
    assert not (inside / "report.html").exists()
    ours = tmp_path / "ours"
    for _ in range(2):  # the second report replaces the first's files
        result = invoke("run", short_run, "--to", ours)
        assert result.exit_code == 0, result.output
    assert "kto-inspect run" in (ours / "report.html").read_text()[:4096]


def test_a_report_folder_of_an_earlier_version_or_a_stopped_report_is_replaced(short_run, tmp_path, monkeypatch):
    """An earlier version's report.html has no generator tag, only its title; a report stopped
    while drawing (here: the third plot raises) has written some PNGs. Both folders are ours."""
    old = tmp_path / "old"
    assert invoke("run", short_run, "--to", old).exit_code == 0
    html = (old / "report.html").read_text()
    (old / "report.html").write_text(html.replace('<meta name="generator" content="kto-inspect run">', ""))
    assert invoke("run", short_run, "--to", old).exit_code == 0
    import kto.inspection.report as report

    real, calls = report.plot_group, []

    def stop_at_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(report, "plot_group", stop_at_third)
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        report.build_report(short_run, stopped)
    assert (stopped / "loss.png").exists()
    monkeypatch.setattr(report, "plot_group", real)
    result = invoke("run", short_run, "--to", stopped)
    assert result.exit_code == 0, result.output
    assert "kto run report" in (stopped / "report.html").read_text()


def test_an_eval_only_run_gets_its_kl_checked_and_a_never_finite_kl_is_said_so(tmp_path):
    """Seen by a bug hunter: a --log-every 0 run (eval lines only) said "KL estimate: not logged"
    though its eval lines logged kl, so a KL stuck at 0 went unflagged; a kl logged as null at
    every step read "not logged" right under the non-finite line naming it."""
    evals = [{**record(s, kl=0.0, kl_raw=-0.5), "split": "eval"} for s in (4, 8)]
    write_metrics(tmp_path / "metrics.jsonl", evals)
    r = json.loads(invoke("run", tmp_path, "--json").stdout)
    assert any(c.startswith("eval KL estimate (clamped): 0 at 2 of 2 logged steps; stuck at 0") for c in r["checks"]), r["checks"]
    write_metrics(tmp_path / "metrics.jsonl", [record(1, kl=None, kl_raw=None), record(2, kl=None, kl_raw=None)])
    r = json.loads(invoke("run", tmp_path, "--json").stdout)
    assert "KL estimate: logged, but never finite (see the non-finite metrics above)" in r["checks"], r["checks"]


def test_the_html_report_names_no_absolute_path_and_no_control_character(tmp_path):
    """A warning named the metrics file by its absolute path in report.html (a report is shared);
    a run folder's name reached the HTML with its bidi override and control characters."""
    run = tmp_path / "ctl\u202eevil\x01"
    run.mkdir()
    write_metrics(run / "metrics.jsonl", [record(1), record(2)], tail='{"step": 3, "split": "tra')
    assert invoke("run", run).exit_code == 0
    page = (run / "report" / "report.html").read_text()
    assert str(tmp_path) not in page and "\u202e" not in page and "\x01" not in page
    assert "warning: ctl\\u202eevil\\x01/metrics.jsonl: line 3 is incomplete" in page


def test_a_run_trained_to_log_nothing_says_so(tmp_path):
    """A finished --log-every 0 run without an eval cache was asked whether it reached its first
    --log-every step; its record says why its metrics.jsonl is empty."""
    from kto.formats.runrecord import write_run_config

    write_run_config(tmp_path, {"log_every": 0, "eval_cache": None}, {})
    (tmp_path / "metrics.jsonl").write_text("")
    result = invoke("run", tmp_path)
    assert result.exit_code == 2 and "the run was trained with --log-every 0 and no --eval-cache, so it writes no metrics lines" in result.output


def test_a_kl_clamped_at_0_tells_a_policy_that_moved_from_one_that_did_not(tmp_path):
    """A raw estimate within 1e-3 of 0 throughout: the policy has not moved on the KL pairs. One
    that fell far below 0 after step 1 (warmup's lr 0) moved: it lowered the log-probs of the
    mismatched pairs, and the clamp keeps z at 0. The first reading used to be given for both,
    quoting step 1's -2.5e-06 as the raw estimate's maximum."""
    still, moved = tmp_path / "still", tmp_path / "moved"
    still.mkdir(), moved.mkdir()
    write_metrics(still / "metrics.jsonl", [record(1, kl_raw=-2.5e-6), record(2, kl_raw=-4e-4), record(3, kl_raw=-1e-5)])
    line = json.loads(invoke("run", still, "--json").stdout)["checks"][0]
    assert "stuck at 0 (raw estimate always within 0.001 of 0, lowest -0.0004: the policy has not moved off the reference" in line, line
    write_metrics(moved / "metrics.jsonl", [record(1, kl_raw=-2.5e-6), record(2, kl_raw=-4.2), record(3, kl_raw=-9.4)])
    line = json.loads(invoke("run", moved, "--json").stdout)["checks"][0]
    assert "stuck at 0 (raw estimate always <= 0: -2.5e-06 at step 1, -9.4 at step 3, lowest -9.4: the policy moved" in line, line
    assert "has not moved" not in line
    # A bf16 run: off 0 from step 1 on, by its numerics, and no further: the numbers cannot tell.
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    write_metrics(bf16 / "metrics.jsonl", [record(s, kl_raw=-0.3 - 0.01 * s) for s in range(1, 6)])
    line = json.loads(invoke("run", bf16, "--json").stdout)["checks"][0]
    assert "-0.31 at step 1, -0.35 at step 5, lowest -0.35: below 0 from the first logged step on, which the run's numerics alone can do" in line, line


def test_a_trend_over_many_train_steps_compares_the_first_and_last_quarters(tmp_path):
    """16 train steps: the first 4 and the last 4 logged values' means, not two single windows (a
    last window with one undesirable row read as 'margin fell' on a run whose margin rose)."""
    margins = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 13.0, -0.01]
    write_metrics(tmp_path / "metrics.jsonl", [record(s, **{"rewards/margins": m}) for s, m in enumerate(margins, start=1)])
    checks = json.loads(invoke("run", tmp_path, "--json").stdout)["checks"]
    assert "reward margin rose: 0.75 (mean of 4 points, steps 1-4) -> 8.748 (mean of 4 points, steps 13-16)" in checks, checks


def test_the_last_values_of_an_eval_only_run_hold_no_rows_of_train_only_keys():
    """Every line carries every key (formats/metrics_line.py), so an eval line holds lr, epoch, ...
    as null by design. Seen failing before: an eval-only run (--log-every 0) showed five rows of
    '-' for them. A train key that is null (rewards/rejected without undesirable rows) still shows."""
    from kto.formats.metrics_line import complete_line
    from kto.inspection.report import last_table
    from kto.inspection.runlog import last_values

    keys = metrics_keys(has_kl=True)
    evals = last_values([complete_line({"step": 4, "split": "eval", "loss": 0.5, "kl": 0.1, "count/chosen": 2.0, "count/rejected": 0.0}, keys)])
    _, rows = last_table({}, evals)
    shown = [row[0] for row in rows]
    assert "loss" in shown and "kl" in shown and "rewards/rejected" in shown
    assert not {"lr", "grad_norm", "epoch", "tokens_per_s", "tokens/saved"} & set(shown)
