"""formats/launch_agreement.py: the settings each process of a launch compares with the others'
(paths left out: each machine may keep its files elsewhere), and the line naming the first that differs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kto.formats.launch_agreement import first_difference, launch_settings


@dataclass(frozen=True)
class Cfg:
    out: Path
    data: tuple[Path, ...]
    model: str
    lr: float = 1e-3
    batch_size: int = 8
    resume: bool | Path = False
    kwargs: dict = field(default_factory=dict)


def settings(cfg: Cfg, **extra: str) -> dict[str, str]:
    return launch_settings(cfg, text_paths=("model",), extra={"torch": "2.0", **extra})


def test_equal_settings_agree() -> None:
    one = settings(Cfg(Path("/a/out"), (Path("/a/x.jsonl"),), "/a/model"))
    assert first_difference([one, dict(one)]) is None
    assert first_difference([one]) is None


def test_paths_are_left_out() -> None:
    """The same run on machines that keep the files elsewhere: the paths differ, nothing else."""
    main = settings(Cfg(Path("/a/out"), (Path("/a/x.jsonl"),), "/a/model", resume=Path("/a/out/checkpoint-2")))
    other = settings(Cfg(Path("/mnt/b/out"), (Path("/b/x.jsonl"),), "/b/model", resume=Path("/mnt/b/out/checkpoint-2")))
    assert first_difference([main, other]) is None
    # A path given on one machine and not on the other is a different setting.
    assert first_difference([main, settings(Cfg(Path("/a/out"), (Path("/a/x.jsonl"),), "/a/model", resume=True))]) == (
        "--resume: True on process 1, a path on the main process: every process of a launch must be given the same settings"
    )


def test_the_first_differing_setting_is_named_with_both_values() -> None:
    base = Cfg(Path("o"), (Path("d"),), "m")
    main = settings(base)
    others = [settings(base), settings(Cfg(Path("o"), (Path("d"),), "m", lr=5e-2, batch_size=4))]
    assert first_difference([main, *others]) == "--lr: 0.05 on process 2, 0.001 on the main process: every process of a launch must be given the same settings"
    nested = settings(Cfg(Path("o"), (Path("d"),), "m", kwargs={"a": 1}))
    assert first_difference([main, nested]).startswith("--kwargs: {'a': 1} on process 1, {} on the main process:")


def test_versions_are_compared_by_their_names() -> None:
    cfg = Cfg(Path("o"), (Path("d"),), "m")
    line = first_difference([settings(cfg), settings(cfg, torch="2.1")])
    assert line == "torch: 2.1 on process 1, 2.0 on the main process: every process of a launch must be given the same settings"
