"""kto-inspect run given a JSON file that is no metrics log, or a kto-train --eval-only --out
folder: it says what the file or folder is, not that a run "stopped before its first logged
step" (what it said of an eval_results.json and of a kto_run.json)."""

import json

from click.testing import CliRunner
from conftest import one_line_error

from kto.formats.runrecord import write_run_config
from kto.inspection.cli import main

# What kto-train --eval-only --out OUT wrote to OUT/eval_results.json (indented, as seen).
EVAL_RESULT = {
    "count/chosen": 6.0,
    "count/rejected": 4.0,
    "eval_cache": "0be0d00b72f0",
    "kl": 1.4858,
    "kl_raw": 1.4858,
    "kto_loss": 0.5002,
    "logps/chosen": -164.2,
    "logps/rejected": -136.6,
    "loss": 0.5002,
    "model": "run1/final",
    "rewards/chosen": 0.1485,
    "rewards/margins": -0.0017,
    "rewards/rejected": 0.1502,
    "sft_loss": 10.71,
}


def invoke(*args):
    return CliRunner().invoke(main, ["run", *map(str, args)])


def eval_only_out(tmp_path):
    out = tmp_path / "evo"
    out.mkdir()
    (out / "eval_results.json").write_text(json.dumps(EVAL_RESULT, indent=2))
    return out


def test_an_eval_only_result_is_named_as_such(tmp_path):
    path = eval_only_out(tmp_path) / "eval_results.json"
    line = one_line_error(invoke(path))
    assert line == (
        f"kto-inspect: error: {path}: a kto-train --eval-only result (one eval of run1/final on eval cache 0be0d00b72f0), "
        "not a metrics log: it has no steps to plot; read it as JSON"
    )


def test_an_eval_only_line_saved_from_stdout_is_named_as_such(tmp_path):
    """--eval-only --json prints the same object on one line: saved as a .jsonl, it is one line without a step."""
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(EVAL_RESULT) + "\n")
    assert "a kto-train --eval-only result (one eval of run1/final" in one_line_error(invoke(path))


def test_an_eval_only_out_folder_says_where_its_result_is(tmp_path):
    out = eval_only_out(tmp_path)
    line = one_line_error(invoke(out))
    assert line == (
        f"kto-inspect: error: {out}: a kto-train --eval-only --out folder, not a run: its result is {out / 'eval_results.json'} "
        "(read it as JSON); it has no metrics log to plot"
    )


def test_a_run_record_asks_for_the_run_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, {"log_every": 1}, {})
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 0.5}) + "\n")
    line = one_line_error(invoke(run / "kto_run.json"))
    assert line == f"kto-inspect: error: {run / 'kto_run.json'}: the run record of {run}, not its metrics log; give the run directory: kto-inspect run {run}"


def test_other_json_still_says_no_line_is_a_metrics_record(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"a": 1}) + "\n")
    assert "no metrics to show (no line is a complete metrics record)" in one_line_error(invoke(path))


def test_a_copied_run_record_points_at_no_folder(tmp_path):
    """A record copied out of its run: its folder is not the run, so none is suggested (it said
    "give the run directory: kto-inspect run ." of the folder the copy lay in)."""
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, {"log_every": 1}, {})
    copy = tmp_path / "record-copy.json"
    copy.write_bytes((run / "kto_run.json").read_bytes())
    line = one_line_error(invoke(copy))
    assert line == f"kto-inspect: error: {copy}: a kto-train run record (kto_run.json), not a metrics log; give its run directory"
