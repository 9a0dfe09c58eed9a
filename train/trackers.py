"""--report-to and --run-name: which accelerate trackers log the metrics, checked before any model loads.

accelerate itself only logs at debug level when a requested tracker's package is missing, and the
run then trains with no logs at all; so every named tracker is checked here, at start-up, and a
missing one is refused in one line that names what to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kto.formats.errors import InputError

if TYPE_CHECKING:
    from accelerate import Accelerator

PROJECT = "kto"
"""The project name every tracker gets; TensorBoard writes its events under OUT/kto/."""


@dataclass(frozen=True)
class Tracker:
    """One tracker accelerate supports: how to tell it is installed, what to install, and which
    keyword of its tracker class carries the run's name (None: the tracker has no such name)."""

    check: str
    """The function of accelerate.utils that says whether the package is importable."""
    install: str
    """What to pip install: an extra of ours where one exists, else the package."""
    run_name_kwarg: str | None


TRACKERS: dict[str, Tracker] = {
    # TensorBoard names a run by its directory (OUT/kto/), so it takes no run name.
    "tensorboard": Tracker("is_tensorboard_available", "'kto-offline[track]'", None),
    "wandb": Tracker("is_wandb_available", "'kto-offline[wandb]'", "name"),
    "mlflow": Tracker("is_mlflow_available", "'kto-offline[mlflow]'", "run_name"),
    "comet_ml": Tracker("is_comet_ml_available", "comet_ml", None),
    "aim": Tracker("is_aim_available", "aim", None),
    "clearml": Tracker("is_clearml_available", "clearml", "task_name"),
    "dvclive": Tracker("is_dvclive_available", "dvclive", None),
    "swanlab": Tracker("is_swanlab_available", "swanlab", "experiment_name"),
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


def start(accelerator: Accelerator, run_name: str, config: dict) -> None:
    """Start the accelerator's trackers (main process) with the run name where a tracker takes one."""
    kwargs = {}
    for tracker in accelerator.log_with:
        kwarg = TRACKERS.get(str(tracker), Tracker("", "", None)).run_name_kwarg
        if kwarg:
            kwargs[str(tracker)] = {kwarg: run_name}
    # TensorBoard's hparams take only scalars and strings: every value is stringified.
    accelerator.init_trackers(PROJECT, config={k: str(v) for k, v in config.items()}, init_kwargs=kwargs)
