"""kto-train --eval-only: the eval line of a model after a run, computed by the function the
run's own evaluations use (train/evaluate.py under train/loop.py's evaluation_mode)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import metrics, one_line_error, run_train, train_error_line

# A run of 4 steps (16 rows, 4 per step), evaluated and checkpointed at steps 2 and 4.
RUN_FLAGS = ("--batch-size", "4", "--eval-every", "2", "--save-every", "2", "--lr", "1e-3", "--log-every", "1")


def eval_only(*args: str):
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    return CliRunner().invoke(main, ["--eval-only", *args])


def eval_line(result) -> dict:
    assert result.exit_code == 0, result.output + repr(result.exception)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cache, tiny_eval_cache, tiny_model_dir):
    """A full fine-tune (β 0.5, w_D 2) and a LoRA run, each with its eval lines at steps 2 and 4."""
    root = tmp_path_factory.mktemp("eval-only")
    made = {}
    for kind, extra in (("full", ("--beta", "0.5", "--desirable-weight", "2")), ("lora", ("--lora-r", "4", "--lr", "1e-2"))):
        result = run_train(tiny_cache, tiny_model_dir, root / kind, "--eval-cache", str(tiny_eval_cache), *RUN_FLAGS, *extra)
        assert result.exit_code == 0, result.output
        made[kind] = root / kind
    return made


def eval_lines(run) -> dict[int, dict]:
    """Step -> its eval line as the API gives it (TrainResult.eval_metrics: no step, split or train-only key)."""
    from kto.train.metrics import metric_values

    return {m["step"]: metric_values(m) for m in metrics(run) if m.get("split") == "eval"}


@pytest.mark.parametrize("kind", ["full", "lora"])
@pytest.mark.parametrize("folder, step", [("checkpoint-2", 2), ("final", 4)])
def test_a_checkpoint_and_final_give_the_runs_own_eval_lines_exactly(runs, tiny_eval_cache, kind, folder, step):
    """The key property: every key of the run's eval line, the same number (exactly: the same
    kernels see the same shapes), plus the model evaluated; the run's β and w_D are used."""
    model = runs[kind] / folder
    result = eval_only("--model", str(model), "--eval-cache", str(tiny_eval_cache))  # the run's batch size: taken from it
    line = eval_line(result)
    expected = eval_lines(runs[kind])[step]
    assert line.pop("model") == str(model)
    assert line == expected
    assert f"eval of {model} on {tiny_eval_cache}: loss " in result.stderr
    if kind == "full":
        assert (
            f"β 0.5, desirable weight 2, undesirable weight 1, loss kto, sft weight 0, dtype fp32, mixed precision auto, attention sdpa: the run's, from {runs[kind] / 'kto_run.json'}"
            in result.stderr
        )


def test_an_explicit_beta_wins_over_the_runs(runs, tiny_eval_cache):
    model = runs["full"] / "checkpoint-2"
    line = eval_line(eval_only("--model", str(model), "--eval-cache", str(tiny_eval_cache), "--batch-size", "4", "--beta", "0.1"))
    expected = eval_lines(runs["full"])[2]
    assert line["kl"] == expected["kl"]  # the KL estimate does not depend on β
    assert line["loss"] != expected["loss"] and line["rewards/chosen"] == pytest.approx(expected["rewards/chosen"] / 5, rel=1e-9)


def test_out_writes_eval_results_json_and_nothing_is_written_without_it(runs, tiny_eval_cache, tmp_path):
    model = runs["full"] / "final"
    before = sorted(p.name for p in runs["full"].iterdir())
    line = eval_line(eval_only("--model", str(model), "--eval-cache", str(tiny_eval_cache)))
    assert sorted(p.name for p in runs["full"].iterdir()) == before and not list(tmp_path.iterdir())
    out = tmp_path / "new" / "dir"
    written = eval_line(eval_only("--model", str(model), "--eval-cache", str(tiny_eval_cache), "--out", str(out)))
    assert written == line
    assert json.loads((out / "eval_results.json").read_text()) == line
    assert sorted(p.name for p in out.iterdir()) == ["eval_results.json"]


def test_refusals_are_one_line_and_write_nothing(runs, tiny_cache, tiny_eval_cache, tmp_path):
    model = str(runs["full"] / "final")
    assert "--eval-only: needs --eval-cache" in one_line_error(eval_only("--model", model))
    line = one_line_error(eval_only("--model", model, "--eval-cache", str(tiny_eval_cache), "--out", str(tiny_cache / "x")))
    assert "inside the kto-precompute cache" in line
    line = one_line_error(eval_only("--model", model, "--eval-cache", str(tiny_eval_cache), "--out", str(runs["full"] / "evals")))
    assert f"inside the kto-train run {runs['full']}" in line
    line = one_line_error(eval_only("--model", model, "--eval-cache", str(tiny_eval_cache), "--lr", "1e-5", "--save-every", "3"))
    assert line.endswith("--eval-only: --lr, --save-every only train; nothing here uses them (leave them out)")
    assert "--base-model: only with --eval-only" in one_line_error(run_train(tiny_cache, model, tmp_path / "r", "--base-model", model))
    assert not (tmp_path / "r").exists() and not (runs["full"] / "evals").exists()


def test_the_python_api_returns_the_eval_line(runs, tiny_eval_cache, capsys):
    from kto.train import TrainConfig, evaluate_model

    model = runs["full"] / "checkpoint-2"
    got = evaluate_model(TrainConfig(model=str(model), eval_cache=tiny_eval_cache, eval_only=True))
    assert {k: v for k, v in got.items() if k != "model"} == eval_lines(runs["full"])[2]
    captured = capsys.readouterr()
    assert captured.out == "" and "note: --eval-only" not in captured.err  # the API prints no JSON, and names no training flag
    with pytest.raises(ValueError, match="eval_only"):
        from kto.train import run

        run(TrainConfig(model=str(model), eval_cache=tiny_eval_cache, eval_only=True))


def test_do_train_false_in_a_config_file_evaluates(runs, tiny_eval_cache, tmp_path):
    """LLaMA-Factory's `do_train: false, do_eval: true` writes OUTPUT_DIR/eval_results.json."""
    model = runs["full"] / "checkpoint-2"
    config = tmp_path / "eval.yaml"
    out = tmp_path / "out"
    config.write_text(
        f"stage: kto\nmodel_name_or_path: {model}\ndo_train: false\ndo_eval: true\neval_cache: {tiny_eval_cache}\noutput_dir: {out}\nper_device_train_batch_size: 4\n"
    )
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    result = CliRunner().invoke(main, ["--config", str(config)])
    line = eval_line(result)
    assert json.loads((out / "eval_results.json").read_text()) == line
    assert {k: v for k, v in line.items() if k != "model"} == eval_lines(runs["full"])[2]
    # The file's tool's defaults (LLaMA-Factory's bf16 off, learning_rate …) are neither "given" nor training flags named.
    assert "--mixed-precision as given" not in result.stderr and "only train" not in result.stderr


def test_do_train_false_without_an_eval_set_is_refused(tmp_path, tiny_model_dir):
    from kto.train.cli import main

    config = tmp_path / "eval.yaml"
    config.write_text(f"stage: kto\nmodel_name_or_path: {tiny_model_dir}\ndo_train: false\noutput_dir: {tmp_path / 'out'}\n")
    result = CliRunner().invoke(main, ["--config", str(config)])
    line = train_error_line(result.output)
    assert result.exit_code == 2 and "do_train false (kto-train's --eval-only): needs --eval-cache" in line
    config.write_text(f"stage: kto\nmodel_name_or_path: {tiny_model_dir}\ndo_train: false\ndo_eval: false\n")
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 2 and "do_train: false with do_eval: false: nothing to do" in train_error_line(result.output)


def test_a_cache_the_run_trained_on_is_refused_as_its_eval_cache(runs, tiny_cache):
    """Without --cache, the run's own recorded --cache (still there, the same fingerprint) is
    what the eval cache is checked against, as training checks it."""
    model = str(runs["full"] / "final")
    result = eval_only("--model", model, "--eval-cache", str(tiny_cache))
    assert f"checked against the run's --cache {tiny_cache}" in result.stderr
    assert result.exit_code == 2 and "the same rows as --cache" in train_error_line(result.output)


def test_an_eval_results_json_that_is_a_folder_is_refused_before_evaluating(runs, tiny_eval_cache, tmp_path):
    (tmp_path / "eval_results.json").mkdir()
    line = one_line_error(eval_only("--model", str(runs["full"] / "final"), "--eval-cache", str(tiny_eval_cache), "--out", str(tmp_path)))
    assert "eval_results.json is not a file it can replace" in line


def test_a_value_that_does_not_exist_is_null_as_in_metrics_jsonl(runs, tmp_path_factory, tiny_model_dir):
    """An eval set without undesirable rows has no rewards/rejected: null, not NaN (invalid JSON)."""
    from conftest import make_cache, text_rows

    only_desirable = make_cache(tmp_path_factory.mktemp("desirable"), [r for r in text_rows() if r["label"]], tiny_model_dir, "good.jsonl")
    result = eval_only("--model", str(runs["full"] / "final"), "--eval-cache", str(only_desirable))
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert line["rewards/rejected"] is None and line["rewards/margins"] is None and line["rewards/chosen"] is not None


def test_a_cache_other_than_the_runs_is_refused_as_cache(runs, tiny_eval_cache):
    """--cache is what the eval cache is checked against: it must be the cache the run trained on."""
    result = eval_only("--model", str(runs["full"] / "final"), "--eval-cache", str(tiny_eval_cache), "--cache", str(tiny_eval_cache))
    line = one_line_error(result)
    assert f"--cache {tiny_eval_cache}: not the cache the run {runs['full']} trained on" in line


def test_another_references_eval_cache_is_refused_when_the_runs_cache_is_not_at_hand(runs, tmp_path, tokenizer_dir):
    """The run's --cache moved away: an eval cache scored by a model other than the run's
    reference (its record names it) would measure rewards against another reference; refused,
    naming the fix."""
    import shutil

    from conftest import make_cache, make_tiny_llama, text_rows

    moved = tmp_path / "run"
    shutil.copytree(runs["full"], moved)
    record = json.loads((moved / "kto_run.json").read_text())
    record["config"]["cache"] = str(tmp_path / "moved-away")
    (moved / "kto_run.json").write_text(json.dumps(record))
    (tmp_path / "other").mkdir()
    other = make_cache(tmp_path / "other", text_rows(), make_tiny_llama(tmp_path / "tiny2", tokenizer_dir, seed=1), "text.jsonl")
    line = one_line_error(eval_only("--model", str(moved / "final"), "--eval-cache", str(other)))
    assert line.startswith(f"kto-train: error: --eval-cache {other}: scored by another model than the reference of the run {moved} ")
    assert "give the run's cache as --cache" in line


def test_a_qlora_runs_adapters_are_evaluated_on_its_4bit_base(tmp_path, tokenizer_dir):
    """The run's --load-in-4bit is taken from its record: the base is quantized as it trained."""
    pytest.importorskip("bitsandbytes")
    from conftest import chat_rows, make_cache, make_tiny_llama, text_rows

    from kto.train.adapters import bitsandbytes_backend

    if bitsandbytes_backend("cpu", 4):
        pytest.skip(bitsandbytes_backend("cpu", 4))
    model = make_tiny_llama(tmp_path / "tiny64", tokenizer_dir, hidden_size=64, intermediate_size=128)
    for name in ("train", "held"):
        (tmp_path / name).mkdir()
    cache = make_cache(tmp_path / "train", chat_rows(), model, "chat.jsonl")
    held = make_cache(tmp_path / "held", text_rows(), model, "text.jsonl")
    run = tmp_path / "run"
    result = run_train(cache, model, run, "--eval-cache", str(held), *RUN_FLAGS, "--lora-r", "4", "--load-in-4bit", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    result = eval_only("--model", str(run / "final"), "--eval-cache", str(held))
    assert eval_line(result) == {**eval_lines(run)[2], "model": str(run / "final")}
    assert "base loaded in 4 bits" in result.stderr
