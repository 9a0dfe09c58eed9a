"""A refusal of a value a --config file set names the file and the key as the file writes it,
for both commands alike (formats/config_file.py: file_key_error, option_value), in the cases an
earlier rewrite missed: a flag of the command line first with a file value after it, a value
that is NaN, a path or a list, and an empty path. A flag the command line gave is never put on
the file. Each refusal is one line, exit status 2, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import text_rows, write_rows

import kto.train.cli
from kto.precompute.cli import main as precompute
from kto.train.cli import main as train

GIVE_ONE = "give one (the eval rows are held-out inputs, or a share of --data)"


def refused(command, tmp_path: Path, text: str, base: list[str], *extra: str) -> tuple[str, Path]:
    """The command's one error line for `text` as its --config file (YAML), and the file's path."""
    config, out = tmp_path / "f.yaml", tmp_path / "out"
    config.write_text(text)
    result = CliRunner().invoke(command, ["--config", str(config), *base, *extra])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not out.exists(), result.output
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.output
    return errors[0].split(": error: ", 1)[1], config


@pytest.fixture
def no_paths(monkeypatch):
    """kto-train's "c" and "m" are placeholders: the refusals tested here come before any path is read."""
    monkeypatch.setattr(kto.train.cli, "check_paths", lambda cfg: None)


def train_base(tmp_path: Path) -> list[str]:
    return ["--cache", "c", "--model", "m", "--out", str(tmp_path / "out")]


def precompute_base(tmp_path: Path) -> list[str]:
    """The model is a placeholder: these refusals come before it is read."""
    return ["--data", str(write_rows(tmp_path / "rows.jsonl", text_rows())), "--model", "m", "--out", str(tmp_path / "out")]


def without_the_files(base: list[str], text: str) -> list[str]:
    """`base` less the flag that the file's first key sets (a flag given would win over it)."""
    flag = {"out": "--out", "output_dir": "--out", "model_name_or_path": "--model", "data": "--data"}.get(text.split(":")[0])
    if flag is None:
        return base
    at = base.index(flag)
    return base[:at] + base[at + 2 :]


def test_a_flag_of_the_command_line_first_says_which_value_after_it_the_file_set(tmp_path):
    """The leading flag stays the flag (the command line gave it); the other value it names came
    from the file, which the message said nowhere (`--max-length 64`, never typed)."""
    line, config = refused(precompute, tmp_path, "cutoff_len: 64\n", precompute_base(tmp_path), "--max-prompt-length", "64")
    assert line == f"--max-prompt-length 64: must be positive and smaller than --max-length 64; --max-length comes from --config {config}'s cutoff_len: 64"
    line, config = refused(precompute, tmp_path, "val_size: 0.1\n", precompute_base(tmp_path), "--eval-data", str(tmp_path / "rows.jsonl"))
    assert line == f"--eval-data and --eval-fraction 0.1: {GIVE_ONE}; --eval-fraction comes from --config {config}'s val_size: 0.1"


def test_a_flag_of_the_command_line_over_the_file_is_never_put_on_the_file(tmp_path):
    line, _ = refused(precompute, tmp_path, "cutoff_len: 32\nmax_prompt_length: 16\n", precompute_base(tmp_path), "--max-length", "16")
    assert line.startswith("--config ") and line.endswith("max_prompt_length 16: must be positive and smaller than --max-length 16")


def test_a_flag_of_the_command_line_first_with_the_files_rank_in_kto_train(tmp_path, no_paths):
    line, config = refused(train, tmp_path, "finetuning_type: full\n", train_base(tmp_path), "--load-in-4bit")
    assert line == (
        "--load-in-4bit: needs adapters (--lora-r R > 0); quantized weights cannot be trained directly; "
        f"--lora-r comes from --config {config}'s finetuning_type: full"
    )


def test_a_path_value_of_the_file_is_named_by_its_key(tmp_path):
    """eval_data is a list of paths once converted: compared with the file's text, it was never
    taken for the file's, so the message named flags the user never typed."""
    rows = tmp_path / "rows.jsonl"
    line, config = refused(precompute, tmp_path, f"eval_data: {rows}\nval_size: 0.1\n", precompute_base(tmp_path))
    assert line == f"--config {config}: eval_data {rows} and --eval-fraction 0.1: {GIVE_ONE}; --eval-fraction comes from the file's val_size: 0.1"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("resume: 5\n", "resume 5: expected a checkpoint directory OUT/checkpoint-STEP (or --resume alone for the latest)"),
        (
            "resume_from_checkpoint: /no/such/run\n",
            "resume_from_checkpoint /no/such/run (kto-train's --resume): expected a checkpoint directory OUT/checkpoint-STEP (or --resume alone for the latest)",
        ),
        (
            "lora_target: [q_proj, v_proj]\nlora_r: 0\n",
            "lora_target [q_proj, v_proj] (kto-train's --lora-target-modules): needs --lora-r R > 0; --lora-r comes from the file's lora_r: 0",
        ),
        ("learning_rate: .nan\n", "learning_rate nan (kto-train's --lr): must be a finite number"),
        ("num_train_epochs: .inf\n", "num_train_epochs inf (kto-train's --epochs): must be a finite number"),
        ("output_dir: ''\n", "output_dir: is empty; give a value or leave the key out"),
        ("model_name_or_path: ''\n", "model_name_or_path: is empty; give a value or leave the key out"),
    ],
)
def test_kto_train_names_the_key_of_a_nan_a_path_a_list_or_an_empty_value(tmp_path, no_paths, text, said):
    line, config = refused(train, tmp_path, text, without_the_files(train_base(tmp_path), text))
    assert line == f"--config {config}: {said}"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("val_size: .nan\n", "val_size nan (kto-precompute's --eval-fraction): must be in [0, 1)"),
        ("out: ''\n", "out: is empty; give a value or leave the key out"),
        ("model_name_or_path: ''\n", "model_name_or_path: is empty; give a value or leave the key out"),
        ("data: ''\n", "data: is empty; give a value or leave the key out"),
        ("data: [rows.jsonl, '']\n", "data: is empty; give a value or leave the key out"),
        ("chat_template: ''\n", "chat_template: is empty; give a value or leave the key out"),
    ],
)
def test_kto_precompute_names_the_key_of_a_nan_or_an_empty_value(tmp_path, text, said):
    """An empty path was Path(''), the current directory: `out: ''` wrote the cache there."""
    line, config = refused(precompute, tmp_path, text, without_the_files(precompute_base(tmp_path), text))
    assert line == f"--config {config}: {said}"


def test_an_out_that_is_a_file_is_named_by_its_key(tmp_path, no_paths):
    """The check compares the Path in force with the file's text: Path('x') == 'x' is False, so
    the message named --out, a flag the user never typed."""
    taken = tmp_path / "taken"
    taken.write_text("")
    line, config = refused(train, tmp_path, f"output_dir: {taken}\n", ["--cache", "c", "--model", "m"])
    assert line == f"--config {config}: output_dir {taken} (kto-train's --out): is a file, not a directory"
    base = precompute_base(tmp_path)
    line, config = refused(precompute, tmp_path, f"out: {taken}\n", base[: base.index("--out")])
    assert line == f"--config {config}: out {taken}: is a file, not a directory"


def key_error(message: str, text: dict, values: dict, given: tuple[str, ...] = ()) -> str:
    """file_key_error's line for `message` about kto-train's `values` in force, `text` the file's keys."""
    from kto.formats.config_file import TRAIN, file_key_error
    from kto.formats.config_names import resolve
    from kto.formats.errors import InputError
    from kto.train.cli import main as command

    resolved = resolve(dict(text), TRAIN, [p.name for p in command.params])
    resolved.written = dict(text)
    return str(file_key_error(InputError(message), "f.yaml", TRAIN, resolved, values, lambda name: name in given))


def test_a_path_check_that_leads_with_the_path_names_the_key():
    """The start-up path checks say the path first (`nocache: no such cache directory`): the
    CLIs' wrapping of them names the file's key (one of a list alone), and never a path the
    command line gave."""
    assert key_error("nocache: no such cache directory", {"cache": "nocache"}, {"cache": Path("nocache")}) == (
        "--config f.yaml: cache nocache: no such cache directory"
    )
    assert key_error("nocache: no such cache directory", {"cache": "other"}, {"cache": Path("nocache")}, ("cache",)) == "nocache: no such cache directory"


def test_a_message_that_names_the_file_already_is_kept():
    message = "--config f.yaml: use_peft: true: cannot read the model type of m (x); give lora_target_modules"
    assert key_error(message, {"lora_r": 0}, {"lora_r": 0}) == message


def test_kto_train_names_the_key_of_lr_scheduler_kwargs_as_kto_precompute_does_chat_template_kwargs(tmp_path, no_paths):
    line, config = refused(train, tmp_path, "lr_scheduler_kwargs: notjson\n", train_base(tmp_path))
    assert line == f"--config {config}: lr_scheduler_kwargs notjson (kto-train's --lr-schedule-kwargs): not a JSON object"


def test_a_missing_path_of_the_file_is_named_by_its_key_before_any_work(tmp_path, tiny_model_dir):
    rows, missing = write_rows(tmp_path / "rows.jsonl", text_rows()), tmp_path / "nodata.jsonl"
    line, config = refused(precompute, tmp_path, f"data: [{rows}, {missing}]\n", ["--model", str(tiny_model_dir), "--out", str(tmp_path / "out")])
    assert line == f"--config {config}: data: {missing}: no such file"
    line, config = refused(train, tmp_path, "cache: nocache\n", train_base(tmp_path)[2:])
    assert line == f"--config {config}: cache nocache: no such cache directory"


def test_a_path_the_command_line_gave_too_is_not_put_on_the_file():
    """`--cache nocache` with `eval_cache: nocache` in the file: the refused path may be the
    command line's, and the message cannot say which option it was, so it names no key."""
    values = {"cache": Path("nocache"), "eval_cache": Path("nocache")}
    assert key_error("nocache: no such cache directory", {"eval_cache": "nocache"}, values, ("cache",)) == "nocache: no such cache directory"


def test_one_of_a_list_of_paths_after_its_flag_is_said_once(tmp_path, tiny_model_dir):
    """`--eval-data link.jsonl: the same file as --data ...` about `eval_data: link.jsonl`: the
    path was said twice (`eval_data link.jsonl link.jsonl:`)."""
    rows = write_rows(tmp_path / "rows.jsonl", text_rows())
    link = tmp_path / "link.jsonl"
    link.symlink_to(rows)
    line, config = refused(precompute, tmp_path, f"data: {rows}\neval_data: {link}\n", ["--model", str(tiny_model_dir), "--out", str(tmp_path / "out")])
    assert line.startswith(f"--config {config}: eval_data: {link}: the same file as --data"), line
    assert line.count(str(link)) == 1, line
