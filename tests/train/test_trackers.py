"""--report-to: trackers get our metric names and values; a missing one is refused before any model loads."""

import re
from pathlib import Path

import pytest
from conftest import metrics, run_train, train_error_line

from kto.formats.errors import InputError
from kto.train import trackers

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "2"]


def test_report_to_parses_lists_and_refuses_unknown_names():
    assert trackers.parse_report_to("none") == ()
    assert trackers.parse_report_to("tensorboard, mlflow,tensorboard") == ("tensorboard", "mlflow")
    assert trackers.parse_report_to("all") == ("all",)
    with pytest.raises(InputError, match="--report-to tensorbord: choose none, all, or a comma list of tensorboard, wandb, mlflow"):
        trackers.parse_report_to("tensorbord")
    with pytest.raises(InputError, match="none and all stand alone"):
        trackers.parse_report_to("none,wandb")


@pytest.mark.parametrize(("name", "install"), [("tensorboard", "'kto-offline[track]'"), ("mlflow", "'kto-offline[mlflow]'"), ("wandb", "'kto-offline[wandb]'")])
def test_a_missing_tracker_is_refused_before_any_model_loads(tiny_cache, tiny_model_dir, tmp_path, monkeypatch, name, install):
    from transformers import AutoModelForCausalLM

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the tracker check")

    monkeypatch.setattr(trackers, "is_installed", lambda n: n != name)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_model)
    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--report-to", f"tensorboard,{name}" if name != "tensorboard" else name)
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == f"kto-train: error: --report-to {name}: {name} is not installed; pip install {install}"
    assert not out.exists()


def test_tensorboard_gets_our_metric_names_and_values(tiny_cache, tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--report-to", "tensorboard", "--run-name", "first-try")
    assert result.exit_code == 0, result.output
    events = sorted(out.rglob("events.out.tfevents.*"))
    # The run's name is its folder: OUT/tensorboard/<--run-name>/, hparams included (accelerate
    # put them in a subfolder per start, named by the time, that TensorBoard listed as a run).
    assert events and all(p.parent == out / "tensorboard" / "first-try" for p in events), [str(p.relative_to(out)) for p in events]
    assert [p.name for p in (out / "tensorboard" / "first-try").iterdir() if p.is_dir()] == []
    logged = {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            logged.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    lines = metrics(out)
    for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "lr", "grad_norm"):
        # A step without one class has no rewards of that class: null in metrics.jsonl, no point in TensorBoard.
        assert sorted(logged[key]) == [m["step"] for m in lines if m[key] is not None], key
        assert logged[key], key
        for step, value in logged[key].items():
            assert value == pytest.approx(lines[step - 1][key], rel=1e-6, abs=1e-12), key  # TensorBoard stores float32
    # The configuration goes in as hparams, with --run-name among them.
    hparams = [p for p in out.rglob("events.out.tfevents.*") if b"first-try" in p.read_bytes()]
    assert hparams


def test_tensorboard_shows_each_run_by_its_run_name(tmp_path):
    """Two runs under one `tensorboard --logdir` are told apart by --run-name (default: the name
    of --out), not both shown as the project name; what TensorBoard's own loader lists is checked."""
    pytest.importorskip("tensorboard")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    for out, name in ((tmp_path / "runs" / "a", "first-try"), (tmp_path / "runs" / "b", None)):
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(log_with=["tensorboard"], project_dir=str(out), cpu=True)
        trackers.start(accelerator, out, name, {"beta": 0.1})
        accelerator.log({"loss": 0.5}, step=1)
        accelerator.end_training()
    AcceleratorState._reset_state(reset_partial_state=True)
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "runs")).Reload()
    runs = multiplexer.Runs()
    # Every run TensorBoard lists has the scalars: no hparams-only run beside it (as README's listing says).
    assert sorted(runs) == ["a/tensorboard/first-try", "b/tensorboard/b"]
    assert all("loss" in tags["tensors"] for tags in runs.values())
    # The hparams are the run's own: TensorBoard's HParams plugin finds them in that run.
    hparams = multiplexer.PluginRunToTagToContent("hparams")
    assert sorted(hparams) == sorted(runs) and all("_hparams_/session_start_info" in tags for tags in hparams.values())


@pytest.mark.parametrize("name", ["a/b", "..", ".", "", "x\\y", "a\x00b", "x\ny", " ", "x ", "a" * 256])
def test_a_run_name_that_is_no_folder_name_is_refused(name, tmp_path):
    from kto.train.config import TrainConfig

    with pytest.raises(InputError, match=f"--run-name {re.escape(repr(name))}: must be one folder name"):
        TrainConfig(cache=tmp_path, model="m", out=tmp_path / "run", run_name=name)
    TrainConfig(cache=tmp_path, model="m", out=tmp_path / "run", run_name="first-try.2")


def test_a_bad_run_name_is_one_line_and_writes_nothing(tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, "--run-name", "x ", "--report-to", "none")
    assert result.exit_code == 2 and not out.exists()
    assert train_error_line(result.output).startswith("kto-train: error: --run-name 'x ': must be one folder name")


@pytest.mark.parametrize(
    ("name", "env", "cls", "run_kwarg"),
    [
        ("wandb", "WANDB_PROJECT", "WandBTracker", "name"),
        ("swanlab", "SWANLAB_PROJECT", "SwanLabTracker", "experiment_name"),
        ("comet_ml", "COMET_PROJECT_NAME", "CometMLTracker", None),
    ],
)
@pytest.mark.parametrize("project", ["myproj", None])
def test_the_project_env_var_transformers_reads_names_the_project(tmp_path, monkeypatch, name, env, cls, run_kwarg, project):
    """As with transformers' callbacks, WANDB_PROJECT (SWANLAB_PROJECT, COMET_PROJECT_NAME) names
    the project when set; unset, it is "kto" (not transformers' "huggingface"). accelerate passes
    the project to wandb.init(project=...) itself, which wins over the variable in wandb."""
    if project:
        monkeypatch.setenv(env, project)
    else:
        monkeypatch.delenv(env, raising=False)
    started = started_trackers(monkeypatch, tmp_path, name, cls, lambda t: (t.run_name, t.init_kwargs))
    assert started == [(project or "kto", {run_kwarg: "first-try"} if run_kwarg else {})]


def test_mlflow_takes_its_experiment_from_mlflow_experiment_name(tmp_path, monkeypatch):
    """accelerate reads MLFLOW_EXPERIMENT_NAME itself, over the project name it is given."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "myexp")
    assert started_trackers(monkeypatch, tmp_path, "mlflow", "MLflowTracker", lambda t: (t.experiment_name, t.run_name)) == [("myexp", "first-try")]
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    assert started_trackers(monkeypatch, tmp_path, "mlflow", "MLflowTracker", lambda t: (t.experiment_name, t.run_name)) == [("kto", "first-try")]


def started_trackers(monkeypatch, tmp_path, name, cls, seen):
    """`seen` of each tracker `trackers.start` starts for --report-to `name`, with the tracker's
    start and configuration stubbed (its package is not installed here)."""
    from accelerate import Accelerator, tracking
    from accelerate.state import AcceleratorState
    from accelerate.utils import LoggerType

    started = []
    tracker_class = getattr(tracking, cls)
    monkeypatch.setattr(tracker_class, "start", lambda self: started.append(seen(self)))
    monkeypatch.setattr(tracker_class, "store_init_configuration", lambda self, values: None)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=True)
        accelerator.log_with = [LoggerType(name)]  # accelerate drops a tracker whose package is missing
        trackers.start(accelerator, tmp_path / "run", "first-try", {"beta": 0.1})
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return started


def test_a_metric_null_for_its_first_hundred_lines_reads_with_the_documented_polars_call(tmp_path):
    """One undesirable row in 150 leaves rewards/rejected null until its step. polars types a
    column from its first 100 lines, so its default read refuses the first number after that
    (found by a hunt: step 113 of such a run); the README and the quickstart read metrics.jsonl
    with infer_schema_length=None, which sees every line."""
    import polars as pl
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from kto.train.metrics import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        writer = MetricsWriter(path, Accelerator(cpu=True))
        for step in range(1, 151):
            writer.write(step, {"loss": 0.5, "rewards/rejected": float("nan") if step < 113 else -0.25})
        writer.close()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(pl.exceptions.ComputeError):
        pl.read_ndjson(path)
    read = pl.read_ndjson(path, infer_schema_length=None)
    assert read.schema["rewards/rejected"] == pl.Float64
    assert read["rewards/rejected"].null_count() == 112 and read["rewards/rejected"][-1] == -0.25
    repo = Path(__file__).resolve().parents[2]
    for doc in ("README.md", "examples/quickstart.sh"):
        calls = re.findall(r"read_ndjson\(([^)]*)\)", (repo / doc).read_text())
        assert calls and all("infer_schema_length=None" in call for call in calls), (doc, calls)


@pytest.mark.parametrize(
    ("before", "resume_step", "kept"),
    [(None, None, None), ([2, 4], 3, [2]), ([4], 2, None), ([2], 2, [2])],
    ids=["fresh", "trimmed", "trimmed-to-nothing", "kept-whole"],
)
def test_metrics_jsonl_appears_at_its_first_line(tmp_path, before, resume_step, kept):
    """Seen: metrics.jsonl was opened (created empty) at set-up, so the README's
    `pl.read_ndjson(path, infer_schema_length=None)` raised "Cannot infer NDJSON types on empty
    reader" until the first --log-every step. The file holds whole lines or does not exist: a
    resume that trims every line past its step removes it, as the uninterrupted run had none yet."""
    import json

    import polars as pl
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from kto.train.metrics import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    if before is not None:
        path.write_text("".join(json.dumps({"step": s, "split": "train", "loss": 0.5}) + "\n" for s in before))
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        writer = MetricsWriter(path, Accelerator(cpu=True), resume_step=resume_step)
        if kept is None:
            assert not path.exists()
        else:
            assert pl.read_ndjson(path, infer_schema_length=None)["step"].to_list() == kept
        writer.write(5, {"loss": 0.25})
        assert pl.read_ndjson(path, infer_schema_length=None)["step"].to_list() == [*(kept or []), 5]
        writer.write(6, {"loss": 0.125})
        writer.close()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert [(m["step"], m["loss"]) for m in metrics(tmp_path)] == [*((s, 0.5) for s in kept or []), (5, 0.25), (6, 0.125)]


def test_a_writer_that_wrote_nothing_closes_and_leaves_no_file(tmp_path):
    """--log-every 0 and no eval cache: nothing to write, so no metrics.jsonl (kto-inspect run says
    why: inspection/runlog.py), and closing it (at the end, or after a failure) is no error."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from kto.train.metrics import MetricsWriter, close_after_failure

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=True)
        MetricsWriter(tmp_path / "metrics.jsonl", accelerator).close()
        close_after_failure(MetricsWriter(tmp_path / "metrics.jsonl", accelerator), accelerator)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert list(tmp_path.iterdir()) == []


def test_a_resume_shows_each_step_once_in_tensorboard(tiny_cache, tiny_model_dir, tmp_path):
    """A run resumed from its step-2 checkpoint logs steps 3-4 again: metrics.jsonl drops the
    first run's lines past the checkpoint, and TensorBoard, given purge_step 3, hides its points
    there too. Without it, TensorBoard's own loader read steps 3 and 4 twice."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = [*ARGS[:-1], "4", "--save-every", "2", "--report-to", "tensorboard", "--run-name", "r"]
    assert run_train(tiny_cache, tiny_model_dir, out, *args).exit_code == 0
    result = run_train(tiny_cache, tiny_model_dir, out, *args, "--resume", str(out / "checkpoint-2"))
    assert result.exit_code == 0, result.output
    acc = EventAccumulator(str(out / "tensorboard" / "r"))  # the folder: every events file in it, in order
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4] == [m["step"] for m in metrics(out)]


def test_a_resume_writes_no_second_set_of_tensorboard_hparams(tmp_path):
    """TensorBoard's HParams view shows a run's first hparams only; a resume that wrote them again
    left a second set (resume=1) it never showed. Seen failing before: two sets, one per start."""
    pytest.importorskip("tensorboard")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    out = tmp_path / "run"
    for step, purge_step in ((1, None), (2, 2)):
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(log_with=["tensorboard"], project_dir=str(out), cpu=True)
        trackers.start(accelerator, out, None, {"beta": 0.1, "resume": purge_step is not None}, purge_step=purge_step)
        accelerator.log({"loss": 0.5}, step=step)
        accelerator.end_training()
    AcceleratorState._reset_state(reset_partial_state=True)
    files = sorted((out / "tensorboard" / "run").glob("events.out.tfevents.*"))
    assert len(files) == 2
    assert [b"_hparams_/session_start_info" in f.read_bytes() for f in files] == [True, False]


def test_trackers_get_only_the_values_a_step_has(tmp_path):
    """rewards/rejected on a step without undesirable rows is NaN: null in metrics.jsonl, left out
    of what the trackers get (a gap in the chart, not a NaN point). The TensorBoard runs here
    have both classes in every step, so nothing else sees it."""
    import json

    from kto.train.metrics import MetricsWriter

    class Logged:
        def __init__(self):
            self.calls = []

        def log(self, values, step):
            self.calls.append((step, values))

    accelerator = Logged()
    writer = MetricsWriter(tmp_path / "metrics.jsonl", accelerator)
    writer.write(1, {"loss": 0.5, "rewards/rejected": float("nan"), "kl": float("inf")})
    writer.write(2, {"loss": 0.25}, split="eval")
    writer.close()
    assert accelerator.calls == [(1, {"loss": 0.5}), (2, {"eval/loss": 0.25})]
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/rejected"] is None and first["kl"] is None and first["loss"] == 0.5
