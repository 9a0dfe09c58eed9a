"""--config values are converted and checked as the flags' own types: YAML's `lr: 1e-6` is a
string (YAML 1.1 wants `1.0e-6` for a float), and it used to reach AdamW as one and crash."""

import pytest
from click.testing import CliRunner

import kto.train.api
import kto.train.cli
from kto.train.cli import main


@pytest.fixture
def captured(monkeypatch):
    """The TrainConfig the CLI builds, without training (the values are what is tested here)."""
    seen = []
    monkeypatch.setattr(kto.train.api, "run", seen.append)  # the CLI calls the API with it
    monkeypatch.setattr(kto.train.cli, "check_paths", lambda cfg: None)  # "c" and "m" are placeholders
    return seen


def run(tmp_path, text, name="run.yaml", *extra):
    path = tmp_path / name
    path.write_text(text)
    return CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o"), *extra])


def test_yaml_strings_that_are_numbers_become_the_flags_types(tmp_path, captured):
    result = run(
        tmp_path,
        "lr: 1e-6\nbeta: 5e-1\nmax-steps: '3'\nwarmup_ratio: 0\nepochs: 2.0\ngradient-checkpointing: 'yes'\ndrift-tolerance: null\neval-cache: evalset\n",
    )
    assert result.exit_code == 0, result.output
    cfg = captured[0]
    assert cfg.lr == 1e-6 and type(cfg.lr) is float
    assert cfg.beta == 0.5 and cfg.max_steps == 3 and type(cfg.max_steps) is int
    assert cfg.warmup_ratio == 0.0 and cfg.epochs == 2.0 and type(cfg.epochs) is float
    assert cfg.gradient_checkpointing is True and cfg.drift_tolerance is None
    assert str(cfg.eval_cache) == "evalset" and not isinstance(cfg.eval_cache, str)


def test_toml_values_are_checked_too(tmp_path, captured):
    result = run(tmp_path, 'lr = "2e-5"\nbatch-size = 4\n', "run.toml")
    assert result.exit_code == 0, result.output
    assert captured[0].lr == 2e-5 and captured[0].batch_size == 4


@pytest.mark.parametrize(
    "text, key",
    [
        ("lr: fast\n", "lr"),
        ("batch-size: 2.5\n", "batch-size"),
        ("max_steps: ten\n", "max-steps"),
        ("epochs: true\n", "epochs"),
        ("beta: [0.1, 0.2]\n", "beta"),
        ("auto-weights: 3\n", "auto-weights"),
        ("resume: maybe\n", "resume"),
        ("loss: dpo\n", "loss"),
        ("lr:\n", "lr"),
        ("lr: .nan\n", "lr"),
    ],
)
def test_a_config_value_of_the_wrong_type_is_one_line_naming_the_key(tmp_path, captured, text, key):
    result = run(tmp_path, text)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kto-train: error:"), result.output
    assert key in lines[0], lines[0]
    assert not captured
