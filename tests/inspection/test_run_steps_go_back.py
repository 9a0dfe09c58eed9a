"""kto-inspect run on a metrics log whose steps go back (an old kto-train's resume appended to
the lines it had logged past its checkpoint; files joined by hand): it says so on one line and
reads the later lines for the repeated steps, as a resume means. It counted both (steps 9-12
twice in the quarter means) and the plots zigzagged back."""

import json

from click.testing import CliRunner

from kto.inspection.cli import main
from kto.inspection.runlog import read_run


def line(step: int, value: float, split: str = "train") -> dict:
    return {"step": step, "split": split, "loss": 0.5, "rewards/chosen": value, "count/chosen": 1.0, "count/rejected": 1.0}


# As seen: run to step 12 (evals at 3, 6, 9, 12), resumed from checkpoint-8, on to step 16.
OLD = [line(s, 1.0) for s in range(1, 13)] + [line(s, 1.0, "eval") for s in (3, 6, 9, 12)]
NEW = [line(s, 2.0) for s in range(9, 17)] + [line(s, 2.0, "eval") for s in (9, 12, 15, 16)]


def ordered(records):
    """In the order kto-train writes them: a step's train line, then its eval line."""
    return sorted(records, key=lambda r: (r["step"], r["split"] == "eval"))


def write(tmp_path, *parts) -> object:
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for part in parts for r in ordered(part)))
    return path


def test_the_later_lines_stand_for_the_repeated_steps(tmp_path):
    path = write(tmp_path, OLD, NEW)
    log = read_run(path)
    assert [(r["step"], r["rewards/chosen"]) for r in log.train] == [(s, 1.0) for s in range(1, 9)] + [(s, 2.0) for s in range(9, 17)]
    assert [(r["step"], r["rewards/chosen"]) for r in log.eval] == [(3, 1.0), (6, 1.0), (9, 2.0), (12, 2.0), (15, 2.0), (16, 2.0)]
    # Line 17 is the first of NEW: 12 train lines and 4 eval lines came before it.
    assert log.warnings == [
        f"{path}: steps go back at line 17 (step 9 after step 12): a resumed run or joined files; "
        "the later lines are read for steps 9 on (6 earlier lines left out)"
    ]


def test_a_repeated_line_is_read_once(tmp_path):
    """The same step twice in a row (a line appended twice): the later one, and one warning."""
    path = write(tmp_path, [line(1, 1.0), line(2, 1.0)], [line(2, 3.0), line(3, 1.0)])
    log = read_run(path)
    assert [(r["step"], r["rewards/chosen"]) for r in log.train] == [(1, 1.0), (2, 3.0), (3, 1.0)]
    assert log.warnings == [
        f"{path}: steps go back at line 3 (step 2 after step 2): a resumed run or joined files; the later lines are read for steps 2 on (1 earlier line left out)"
    ]


def test_a_step_train_and_eval_line_is_no_step_back(tmp_path):
    path = write(tmp_path, [line(1, 1.0), line(2, 1.0), line(2, 1.0, "eval"), line(3, 1.0), line(4, 1.0), line(4, 1.0, "eval")])
    log = read_run(path)
    assert (len(log.train), len(log.eval), log.warnings) == (4, 2, [])


def test_the_checks_count_each_step_once_and_the_cli_says_it_once(tmp_path):
    write(tmp_path, OLD, NEW)
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert (r["train_lines"], r["eval_lines"]) == (16, 6)
    # 16 steps: quarters of 4, steps 1-4 (1.0 each) and 13-16 (2.0 each).
    assert "desirable rewards rose: 1 (mean of 4 points, steps 1-4) -> 2 (mean of 4 points, steps 13-16)" in r["checks"]
    warned = [ln for ln in result.stderr.splitlines() if "steps go back" in ln]
    assert len(warned) == 1 and warned[0].startswith("kto-inspect: warning: ")


def test_evals_written_after_every_train_line_are_no_step_back(tmp_path):
    """Each split's steps are its own: a file of train lines then eval lines (joined by hand)
    keeps them all."""
    path = write(tmp_path, [line(s, 1.0) for s in range(1, 7)])
    with path.open("a") as f:
        f.writelines(json.dumps(line(s, 1.0, "eval")) + "\n" for s in (2, 4, 6))
    log = read_run(path)
    assert (len(log.train), len(log.eval), log.warnings) == (6, 3, [])


def test_an_eval_that_goes_back_replaces_the_train_lines_after_it(tmp_path):
    """Resumed from checkpoint-6 with --eval-every 1 and --log-every 4: its first line is the
    eval of step 7, after the old run's step 8. The old train line of step 8 is left out too."""
    old = [line(4, 1.0), line(4, 1.0, "eval"), line(8, 1.0), line(8, 1.0, "eval")]
    path = write(tmp_path, old, [line(7, 2.0, "eval"), line(8, 2.0), line(8, 2.0, "eval")])
    log = read_run(path)
    assert [(r["step"], r["rewards/chosen"]) for r in log.train] == [(4, 1.0), (8, 2.0)]
    assert [(r["step"], r["rewards/chosen"]) for r in log.eval] == [(4, 1.0), (7, 2.0), (8, 2.0)]
    assert log.warnings == [
        f"{path}: steps go back at line 5 (step 7 after step 8): a resumed run or joined files; the later lines are read for steps 7 on (2 earlier lines left out)"
    ]


def test_many_steps_back_are_said_five_times_then_counted(tmp_path):
    path = write(tmp_path, *([line(1, 1.0), line(2, 1.0)] for _ in range(8)))
    log = read_run(path)
    assert [r["step"] for r in log.train] == [1, 2]
    assert len(log.warnings) == 6 and log.warnings[-1] == f"{path}: steps go back at 2 more lines (14 earlier lines left out in all)"


def test_a_half_written_last_line_counts_every_complete_line(tmp_path):
    """After steps went back, the half-written line's warning counts the complete lines of the
    file (32), not those kept (it said 16)."""
    path = write(tmp_path, OLD, OLD)
    with path.open("a") as f:
        f.write('{"step": 13, "spl')
    log = read_run(path)
    assert log.warnings[-1] == f"{path}: line 33 is incomplete (the run was cut off mid-write?); using the 32 complete lines"
