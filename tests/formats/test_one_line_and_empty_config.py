"""Two ways an error or a config went astray without a word: a path holding a line break
(`--out $'a\\nb'`) printed the error on two lines, where every error is one; an empty `--config`
file (or one of comments only, or `{}`) ran as if no --config had been given, all defaults."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kto.formats.config_file import read_mapping
from kto.formats.errors import InputError, one_line


def test_line_breaks_and_control_characters_are_escaped_as_python_writes_them():
    assert one_line("--out a\nb\r\tc\x1b[31m\x85\u2028: x") == "--out a\\nb\\r\\tc\\x1b[31m\\x85\\u2028: x"
    assert str(InputError("--cache no\ncache: no such cache directory")) == "--cache no\\ncache: no such cache directory"
    escaped = one_line("a\\nb \u00e9\u4e2d")  # a backslash and printable non-ASCII stay as written
    assert escaped == "a\\nb \u00e9\u4e2d" and one_line(escaped) == escaped


def test_a_run_directory_with_a_line_break_is_one_error_line(tmp_path):
    from kto.train.cli import main

    taken = tmp_path / "a\nfile"
    taken.write_text("")
    result = CliRunner().invoke(main, ["--cache", str(tmp_path), "--model", "m", "--out", str(taken)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line]
    assert lines == [f"kto-train: error: --out {tmp_path}/a\\nfile: is a file, not a directory"]


@pytest.mark.parametrize(("name", "text"), [("e.yaml", ""), ("c.yaml", "  \n# only a comment\n"), ("b.yaml", "{}\n"), ("e.toml", "# nothing\n")])
def test_a_config_file_without_keys_is_refused_naming_it(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_mapping(path)
    assert str(err.value) == f"--config {path}: holds no keys (the file is empty or only comments); write the flags to set in it, or leave --config out"


def test_a_yaml_scalar_is_not_taken_for_an_empty_mapping(tmp_path):
    """`0` or `false` as the whole file was `{}` too (the loader's `or {}`)."""
    path = tmp_path / "zero.yaml"
    path.write_text("0\n")
    with pytest.raises(InputError, match=r"expected a mapping of flag names to values$"):
        read_mapping(path)


def test_kto_train_refuses_an_empty_config_in_one_line(tmp_path):
    from kto.train.cli import main

    path = tmp_path / "run.yaml"
    path.write_text("")
    result = CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert (
        result.output.strip()
        == f"kto-train: error: --config {path}: holds no keys (the file is empty or only comments); write the flags to set in it, or leave --config out"
    )
