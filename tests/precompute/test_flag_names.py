"""kto-precompute's refusals name the flag the value came from, and leave no --out behind:
--eval-data's inputs were refused as `--data …`, a file of an unknown type named no flag, and
an --attn-implementation or --device-map transformers refuses was found only at the model's
load, after --out was claimed (OUT/.lock, OUT/.journal/run.json left), named as `--model …:
cannot load model`. Values that were silently taken as unset ('' for --sharegpt-info,
--dataset, --device-map, --chat-template-kwargs) are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import precompute_args, text_rows, write_rows

from kto.formats.errors import InputError
from kto.precompute.api import run
from kto.precompute.cli import main
from kto.precompute.config import PrecomputeConfig


def refusal(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kto-precompute: error: "), result.stderr
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_rows(tmp_path / "d.jsonl", text_rows())


def test_an_eval_data_directory_is_named_as_eval_data(tmp_path, data, tiny_model_dir):
    (tmp_path / "adir").mkdir()
    line = refusal(precompute_args(data, tiny_model_dir, tmp_path / "o", "--eval-data", str(tmp_path / "adir")))
    assert f"--eval-data {tmp_path / 'adir'}: a directory" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--data", "--eval-data"])
def test_a_file_of_an_unknown_type_is_named_by_its_flag_before_anything_is_written(tmp_path, data, tiny_model_dir, flag):
    bad = tmp_path / "afile.txt"
    bad.write_text("x\n")
    args = precompute_args(bad, tiny_model_dir, tmp_path / "o") if flag == "--data" else precompute_args(data, tiny_model_dir, tmp_path / "o", flag, str(bad))
    line = refusal(args)
    assert f"{flag} {bad}: unknown file type '.txt'" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("flag", "value"), [("--attn-implementation", "abc"), ("--attn-implementation", ""), ("--device-map", "abc")])
def test_an_unknown_attention_or_device_map_is_refused_before_out_is_claimed(tmp_path, data, tiny_model_dir, flag, value):
    line = refusal(precompute_args(data, tiny_model_dir, tmp_path / "o", flag, value))
    assert line.startswith(f"kto-precompute: error: {flag} {value!r}") and "--model" not in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["eager", "sdpa", "paged|eager", "kernels-community/flash-attn2"])
def test_the_attention_names_transformers_takes_pass_the_name_check(value):
    from kto.formats.compute.load_options import check_attention_name

    check_attention_name(value)


@pytest.mark.parametrize("flag", ["--sharegpt-info", "--dataset", "--device-map", "--chat-template-kwargs"])
def test_an_empty_value_is_refused_not_taken_as_unset(tmp_path, data, tiny_model_dir, flag):
    line = refusal(precompute_args(data, tiny_model_dir, tmp_path / "o", flag, ""))
    assert flag in line and "empty" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("field", "flag"), [("out", "--out"), ("eval_data", "--eval-data"), ("data", "--data"), ("chat_template", "--chat-template")])
def test_the_api_refuses_an_empty_path_naming_its_flag(tmp_path, data, tiny_model_dir, field, flag):
    kwargs = {"data": (data,), "model": str(tiny_model_dir), "out": tmp_path / "o", field: ""}
    with pytest.raises(InputError, match=f"^{flag} '': an empty path"):
        PrecomputeConfig(**kwargs)


def test_the_api_names_eval_data_for_a_directory(tmp_path, data, tiny_model_dir):
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputError, match="^--eval-data .*adir: a directory"):
        run(PrecomputeConfig(data=(data,), model=str(tiny_model_dir), out=tmp_path / "o", eval_data=(tmp_path / "adir",)))


def test_an_attention_name_is_left_to_the_load_under_trust_remote_code(tiny_model_dir):
    """A folder's own code may register its attention function when transformers imports it,
    after this check: under --trust-remote-code the name is not judged from transformers alone."""
    from kto.formats.compute.load_options import check_attention_implementation
    from kto.formats.compute.sources import resolve_source

    source = resolve_source(str(tiny_model_dir))
    with pytest.raises(InputError, match="my_attention"):
        check_attention_implementation(source, "my_attention")
    check_attention_implementation(source, "my_attention", trust_remote_code=True)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"a": NaN}', "--chat-template-kwargs: values must be JSON (Out of range float values are not JSON compliant"),
        ('{"a": 1, "a": 2}', """--chat-template-kwargs {"a": 1, "a": 2}: names 'a' twice"""),
    ],
)
def test_template_kwargs_that_are_no_json_object_are_refused(text, says):
    """json.loads takes NaN and keeps the last of a repeated key: both went into the cache's
    settings without a word (a --config file refuses a repeated key)."""
    from kto.precompute.templates import parse_kwargs

    with pytest.raises(InputError) as info:
        parse_kwargs(text)
    assert str(info.value).startswith(says), str(info.value)
