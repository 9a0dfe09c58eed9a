"""kto-train --eval-only takes a run's attention implementation from its kto_run.json only where
it is one transformers has built in: a kernels-hub repo (`org/repo`, code fetched and run at
load) is used only when the user names it. And the settings line shows the attention used."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import one_line_error, run_train


def eval_only(*args: str):
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    return CliRunner().invoke(main, ["--eval-only", *args])


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_cache, tiny_eval_cache, tiny_model_dir):
    out = tmp_path_factory.mktemp("attn-record") / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, "--eval-cache", str(tiny_eval_cache), "--batch-size", "8", "--save-every", "2", "--log-every", "1")
    assert result.exit_code == 0, result.output
    return out


def recorded_with(run, tmp_path, attn: object):
    """A copy of `run` whose record names `attn` as its attn_implementation."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = json.loads((copy / "kto_run.json").read_text())
    record["config"]["attn_implementation"] = attn
    (copy / "kto_run.json").write_text(json.dumps(record))
    return copy


@pytest.mark.parametrize("attn", ["evilorg/evil-kernel", "kernels-community/flash-attn2@main:fa", "abc", 5])
def test_a_record_naming_no_built_in_attention_is_refused_before_anything_loads(run, tiny_eval_cache, tmp_path, monkeypatch, attn):
    import kto.formats.compute.loading as loading

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_completion_logps", no_load)
    copy = recorded_with(run, tmp_path, attn)
    out = tmp_path / "out"
    line = one_line_error(eval_only("--model", str(copy / "checkpoint-2"), "--eval-cache", str(tiny_eval_cache), "--out", str(out)))
    assert line == (
        f"kto-train: error: {copy / 'kto_run.json'}: the run's attn_implementation {attn!r} is not an attention implementation transformers "
        "has built in (a kernels-hub repo's code is fetched and run only where you name it); give --attn-implementation: sdpa, "
        "or that repo to use its kernel"
    )
    assert not out.exists()


def test_the_repo_named_on_the_command_line_is_taken_and_the_line_says_so(run, tiny_eval_cache, tmp_path):
    """Given on the command line the record's value is not read: here sdpa, shown in the line."""
    copy = recorded_with(run, tmp_path, "evilorg/evil-kernel")
    result = eval_only("--model", str(copy / "checkpoint-2"), "--eval-cache", str(tiny_eval_cache), "--attn-implementation", "sdpa")
    assert result.exit_code == 0, result.output
    assert f"mixed precision auto, attention sdpa: the run's, from {copy / 'kto_run.json'}, but --attn-implementation as given" in result.stderr


def test_a_built_in_name_from_the_record_is_used_and_shown(run, tiny_eval_cache, tmp_path):
    copy = recorded_with(run, tmp_path, "eager")
    result = eval_only("--model", str(copy / "checkpoint-2"), "--eval-cache", str(tiny_eval_cache))
    assert result.exit_code == 0, result.output
    assert f"mixed precision auto, attention eager: the run's, from {copy / 'kto_run.json'}\n" in result.stderr
    plain = eval_only("--model", str(run / "checkpoint-2"), "--eval-cache", str(tiny_eval_cache))
    assert f"mixed precision auto, attention sdpa: the run's, from {run / 'kto_run.json'}\n" in plain.stderr
    # The same numbers: eager and sdpa agree on CPU to float rounding.
    assert json.loads(result.stdout)["loss"] == pytest.approx(json.loads(plain.stdout)["loss"], rel=1e-5)
