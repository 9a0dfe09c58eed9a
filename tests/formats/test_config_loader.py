"""formats/config_file.py: the `--config FILE` loader of kto-precompute and kto-train."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kto.formats.config_file import load_config_file
from kto.formats.errors import InputError

KNOWN = ("chat_template_kwargs", "max_length", "data")


def alias_bomb(levels: int = 6) -> str:
    """A YAML "billion laughs" under chat_template_kwargs: level i lists level i-1 ten times,
    so `levels` levels of aliases stand for 10**levels strings in a file of a few hundred bytes."""
    lines = ["chat_template_kwargs:", "  l0: &l0 [" + ",".join(['"xxxxxxxx"'] * 10) + "]"]
    lines += [f"  l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_in_one_line_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    with pytest.raises(InputError) as err:
        load_config_file(path, KNOWN)
    message = str(err.value)
    assert message == f"--config {path}: line 2: YAML aliases (&/*) are not accepted in config files"


def test_a_lone_yaml_alias_is_refused_with_its_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_length: 64\ndata: [a.jsonl]\nchat_template_kwargs: {x: *nothing}\n")
    with pytest.raises(InputError, match=r"line 3: YAML aliases"):
        load_config_file(path, KNOWN)


def test_yaml_without_aliases_still_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max-length: 64\ndata: [a.jsonl, 'b&c.jsonl']\nchat_template_kwargs: {enable_thinking: false}\n")
    assert load_config_file(path, KNOWN) == {"max_length": 64, "data": ["a.jsonl", "b&c.jsonl"], "chat_template_kwargs": {"enable_thinking": False}}


def test_kto_precompute_refuses_the_alias_bomb_before_reading_anything(tmp_path):
    """The whole command, in a process of its own with a timeout, so a regression fails instead
    of hanging. Before the fix, with a real --data and --model, this command ran for 40 s and
    wrote a cache whose manifest held the expanded kwargs; here it must stop at the file."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    cmd = [sys.executable, "-m", "kto.precompute.cli", "--config", str(path), "--data", "x.jsonl", "--model", "m", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"kto-precompute: error: --config {path}: line 2: YAML aliases (&/*) are not accepted in config files"]
    assert not Path(tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("run.yaml", "max_length: 64\nmax_length: 128\n", "line 2: 'max_length' again (first on line 1); give it once"),
        ("run.yaml", "max-length: 64\nmax_length: 128\n", "'max-length' and 'max_length' are one option (max_length); give it once"),
        ("run.toml", 'max-length = 64\nmax_length = 128\ndata = ["a"]\n', "'max-length' and 'max_length' are one option (max_length); give it once"),
        ("run.yaml", "chat_template_kwargs: {a: 1, a: 2}\n", "line 1: 'a' again (first on line 1); give it once"),
    ],
    ids=["yaml-twice", "dash-and-underscore", "toml-dash-and-underscore", "nested"],
)
def test_a_key_given_twice_is_refused_not_overwritten(tmp_path, name, text, message):
    """Seen in an attack: max-steps: 5 then max_steps: 10 (or lr twice) kept the last value, with
    no message; YAML keeps the last of two equal keys, and folding dashes merged the two."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config_file(path, KNOWN)
    assert str(err.value) == f"--config {path}: {message}"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.yaml", "lr: 1e-6\nhub_token: hf_SECRET: x\n", "not valid YAML (mapping values are not allowed here at line 2, column 21)"),
        (
            "b.yaml",
            'hub_token: "hf_SECRET\n',
            "not valid YAML (while scanning a quoted scalar at line 1, column 12; found unexpected end of stream at line 2, column 1)",
        ),
        ("c.toml", "lr = 1e-6\nhub_token = hf_SECRET\n", "not valid TOML (Invalid value (at line 2, column 13))"),
    ],
)
def test_a_parse_error_names_the_place_and_never_echoes_the_line(tmp_path, name, text, message):
    """PyYAML's own message quotes the offending line, which may hold a hub token; the refusal is
    printed and logged, so it gives the line and column only."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as refused:
        load_config_file(path, ["lr", "hub_token"])
    assert str(refused.value) == f"--config {path}: {message}"
    assert "SECRET" not in str(refused.value)
