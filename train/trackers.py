"""--report-to and --run-name: which accelerate trackers log the metrics, checked before any model loads.

accelerate itself only logs at debug level when a requested tracker's package is missing, and the
run then trains with no logs at all; so every named tracker is checked here, at start-up, and a
missing one is refused in one line that names what to install.

The run's name goes to every tracker that takes one. TensorBoard takes it as a folder: accelerate
would write its events under OUT/<project name>/, so that two runs under one `tensorboard --logdir`
both showed as "kto"; `start` gives it OUT/tensorboard/<run name>/ instead, where the run name
is what TensorBoard lists.

The project is "kto" (transformers' callbacks default to "huggingface"), except where the
variable transformers' callback reads is set: WANDB_PROJECT, SWANLAB_PROJECT, COMET_PROJECT_NAME
(comet_ml's own, which transformers leaves to it). accelerate hands every tracker the one project
name of `init_trackers`, which wandb.init(project=...) takes over WANDB_PROJECT, so such a tracker
is made here with its own. MLFLOW_EXPERIMENT_NAME and CLEARML_PROJECT accelerate reads itself.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kto.formats.errors import InputError

if TYPE_CHECKING:
    from accelerate import Accelerator

PROJECT = "kto"
"""The project name trackers get (wandb's project, mlflow's experiment, …) unless an env var names one."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard's events: OUT/tensorboard/<run name>/ (runs before it wrote OUT/kto/)."""


@dataclass(frozen=True)
class Tracker:
    """One tracker accelerate supports: how to tell it is installed, what to install, and which
    keyword of its tracker class carries the run's name (None: the tracker has no such name)."""

    check: str
    """The function of accelerate.utils that says whether the package is importable."""
    install: str
    """What to pip install: an extra of ours where one exists, else the package."""
    run_name_kwarg: str | None
    project_env: str | None = None
    """The env var naming the project, read as transformers' callback reads it (None: there is
    none, or accelerate reads it itself: MLFLOW_EXPERIMENT_NAME, CLEARML_PROJECT)."""


TRACKERS: dict[str, Tracker] = {
    # TensorBoard names a run by its folder: `start` gives it OUT/tensorboard/<run name>/.
    "tensorboard": Tracker("is_tensorboard_available", "'kto-offline[track]'", None),
    "wandb": Tracker("is_wandb_available", "'kto-offline[wandb]'", "name", "WANDB_PROJECT"),
    "mlflow": Tracker("is_mlflow_available", "'kto-offline[mlflow]'", "run_name"),
    "comet_ml": Tracker("is_comet_ml_available", "comet_ml", None, "COMET_PROJECT_NAME"),
    "aim": Tracker("is_aim_available", "aim", None),
    "clearml": Tracker("is_clearml_available", "clearml", "task_name"),
    "dvclive": Tracker("is_dvclive_available", "dvclive", None),
    "swanlab": Tracker("is_swanlab_available", "swanlab", "experiment_name", "SWANLAB_PROJECT"),
    "trackio": Tracker("is_trackio_available", "trackio", "name"),
}
CHOICES = ("none", "all", *TRACKERS)


def parse_report_to(value: str) -> tuple[str, ...]:
    """'none' -> (); 'all' -> ('all',); 'tensorboard,wandb' -> both, in order, each once.
    Pure: it checks names only (TrainConfig.__post_init__); `log_with` checks installation."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHOICES]
    if unknown or not names:
        raise InputError(f"--report-to {value}: choose none, all, or a comma list of {', '.join(TRACKERS)}")
    if len(names) > 1 and ({"none", "all"} & set(names)):
        raise InputError(f"--report-to {value}: none and all stand alone")
    return () if names == ["none"] else tuple(dict.fromkeys(names))


def is_installed(name: str) -> bool:
    """Whether `name`'s package can be imported, asked the way accelerate asks."""
    return bool(getattr(importlib.import_module("accelerate.utils"), TRACKERS[name].check)())


def log_with(report_to: str) -> list[str] | None:
    """The `log_with` for Accelerator: every named tracker, each checked to be installed (called
    before any model loads). 'all' means every installed tracker, as in transformers' Trainer."""
    names = parse_report_to(report_to)
    if names == ("all",):
        return [n for n in TRACKERS if is_installed(n)] or None
    for name in names:
        if not is_installed(name):
            raise InputError(f"--report-to {name}: {name} is not installed; pip install {TRACKERS[name].install}")
    return list(names) or None


def check_run_name(run_name: str) -> None:
    """--run-name is a folder name (TensorBoard's OUT/tensorboard/<run name>/), so it must be one:
    not empty, no / or \\, not . or .. (it would write outside that folder), no control
    character, no space at either end, at most 255 bytes (a file system's limit for a name).
    Checked with the other settings, before anything is written, whichever trackers run."""
    bad = (
        run_name in ("", ".", "..")
        or any(sep in run_name for sep in ("/", "\\"))
        or any(ord(c) < 32 or ord(c) == 127 for c in run_name)
        or run_name != run_name.strip()
        or len(run_name.encode()) > 255
    )
    if bad:
        raise InputError(
            f"--run-name {run_name!r}: must be one folder name (TensorBoard logs to OUT/{TENSORBOARD_DIR}/NAME): "
            "no / or \\, not . or .., no control character or space at either end, at most 255 bytes"
        )


def start(accelerator: Accelerator, out: Path, run_name: str | None, config: dict, purge_step: int | None = None) -> None:
    """Start the accelerator's trackers (main process) with the run name (default: the name of
    `out`) where a tracker takes one, and TensorBoard's events in OUT/tensorboard/<run name>/.
    `purge_step`: a resume's first new step, from which TensorBoard hides what a killed run
    logged past its checkpoint (metrics.jsonl drops those lines; TensorBoard showed both)."""
    run_name = run_name or Path(out).resolve().name
    kwargs = {}
    for tracker in accelerator.log_with:
        kwarg = TRACKERS.get(str(tracker), Tracker("", "", None)).run_name_kwarg
        if kwarg:
            kwargs[str(tracker)] = {kwarg: run_name}
    # TensorBoard shows a run's first hparams only: a resume that wrote them again added a second
    # set its HParams view never showed. So they are written once, with the run's first events.
    first_events = not any((Path(out) / TENSORBOARD_DIR / run_name).glob("events.out.tfevents.*"))
    accelerator.log_with = [made_tracker(t, out, run_name, kwargs, purge_step) for t in accelerator.log_with]
    # config=None: the configuration is stored below, TensorBoard's hparams in the run's own folder.
    accelerator.init_trackers(PROJECT, config=None, init_kwargs=kwargs)
    values = tracker_config(config)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            if first_events:
                tensorboard_hparams(tracker.writer, values)
        else:
            tracker.store_init_configuration(values)


def tensorboard_hparams(writer: object, values: dict) -> None:
    """The run's settings as TensorBoard hparams, written to the run's own events file.
    accelerate's store_init_configuration calls SummaryWriter.add_hparams, which (torch 2.x)
    writes them to a new subfolder named by time.time(), plus an hparams.yml in another: each
    start added folders that `tensorboard --logdir` listed as runs with no scalars. The same
    three summaries add_hparams writes, here beside the scalars, put the run itself in the HParams
    view (kto_run.json holds the configuration the yaml held)."""
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(values, {}):
        writer.file_writer.add_summary(summary)
    writer.flush()


def project_name(name: str) -> str:
    """The project of tracker `name`: its env var's value where set and not empty, else PROJECT."""
    env = TRACKERS[name].project_env if name in TRACKERS else None
    return (os.environ.get(env) if env else None) or PROJECT


def made_tracker(tracker: object, out: Path, run_name: str, init_kwargs: dict[str, dict], purge_step: int | None = None) -> object:
    """What goes in `log_with` for `tracker`: its name, for accelerate to make it with PROJECT, or
    a tracker object, which accelerate takes as already made: TensorBoard's (accelerate would use
    the project name as the run and project_dir as the folder) and one whose env var names its
    project (accelerate would pass PROJECT, which wandb.init takes over WANDB_PROJECT)."""
    name = str(tracker)
    if name == "tensorboard":
        return tensorboard_tracker(out, run_name, purge_step)
    if project_name(name) == PROJECT:
        return tracker
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return LOGGER_TYPE_TO_CLASS[name](project_name(name), **init_kwargs.get(name, {}))


def tracker_config(config: dict) -> dict:
    """The run's settings as trackers take them: TensorBoard's hparams hold only numbers, bools and
    strings, so None, lists and mappings become strings, and numbers stay numbers (a string lr
    has no axis in TensorBoard's HParams view, nor a numeric comparison in wandb), as
    transformers' `to_sanitized_dict` keeps them."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()}


def tensorboard_tracker(out: Path, run_name: str, purge_step: int | None = None) -> object:
    """accelerate's TensorBoard tracker, writing to OUT/tensorboard/<run name>/; its keywords go
    to SummaryWriter, whose purge_step hides the events at and past that step."""
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker(run_name, Path(out) / TENSORBOARD_DIR, **({} if purge_step is None else {"purge_step": purge_step}))
