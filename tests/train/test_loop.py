"""kto-train end to end on the tiny cache: runs, resumes exactly, checks what it must check."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import chat_rows, crashed_copy, make_cache, metrics, run_train, train_error_line
from numerics_bounds import assert_step0_agrees, cache_sum_bound

from kto.train.cli import main

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--warmup-ratio", "0.2"]


def train_cli(cache, model, out, *extra):
    return run_train(cache, model, out, *ARGS, *extra)


@pytest.fixture(scope="module")
def full_run(tiny_cache, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "full"
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "6", "--save-every", "3")
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.numerics
def test_run_logs_every_step_and_the_policy_moves(full_run, tiny_cache):
    out, output = full_run
    lines = metrics(out)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    for key in (
        "loss",
        "kl",
        "kl_raw",
        "sft_loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "peak_memory_gb",
        "rss_anon_gb",
        "rss_file_gb",
        "padding/policy",
        "padding/kl",
        "tokens/saved",
    ):
        assert key in lines[0], key
    assert all(0 <= m["padding/policy"] < 1 and 0 <= m["padding/kl"] < 1 for m in lines)
    # Step 1 runs with πθ = πref: every reward and the KL estimate are 0 up to fp32 rounding (the
    # policy's batches are shaped otherwise than the prefix-shared reference scoring's, so each
    # sum may be off by its tokens' bounds: tests/numerics_bounds.py); β = 0.1, the default.
    sums = cache_sum_bound(tiny_cache)
    assert abs(lines[0]["rewards/chosen"]) <= 0.1 * sums and abs(lines[0]["kl_raw"]) <= sums
    assert lines[0]["loss"] == pytest.approx(0.5)
    assert abs(lines[-1]["kl_raw"]) > sums  # training moved it past what rounding explains
    assert_step0_agrees(output, tiny_cache)
    assert "n_D = 8, n_U = 8" in output


def test_lr_logged_is_the_one_each_step_trained_with(full_run, tiny_cache):
    """--lr 1e-3, 6 steps, warmup ⌊0.2 · 6⌋ = 1: lr·s/1 at s = 0, then linear to 0 at s = 6.
    Step 1 trains at lr 0, so step 2 still sees πθ = πref (logged so, as transformers' Trainer
    logs the rate read before its scheduler's step)."""
    lines = metrics(full_run[0])
    assert [m["lr"] for m in lines] == pytest.approx([0.0, 1e-3, 8e-4, 6e-4, 4e-4, 2e-4], rel=1e-12)
    assert abs(lines[1]["kl_raw"]) <= cache_sum_bound(tiny_cache)


def test_final_model_loads_with_automodel(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = full_run
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    AutoTokenizer.from_pretrained(out / "final")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (out / "final" / "model.safetensors").is_file()


def test_resume_reproduces_the_uninterrupted_losses(full_run, tiny_cache, tiny_model_dir, tmp_path):
    out, _ = full_run
    crashed = crashed_copy(out, tmp_path / "crashed", 3, metrics_lines=4)  # one line past the checkpoint
    result = train_cli(tiny_cache, tiny_model_dir, crashed, "--max-steps", "6", "--save-every", "3", "--resume")
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output
    a, b = metrics(out), metrics(crashed)
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "lr", "grad_norm"):
            assert x[key] == y[key], (x["step"], key)
    from safetensors.torch import load_file

    wa, wb = load_file(out / "final" / "model.safetensors"), load_file(crashed / "final" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_final_config_keeps_the_models_use_cache(full_run, tiny_model_dir):
    """A serving stack reads final/config.json: use_cache false there means no KV cache on a
    plain forward. Training never needs it off in the config (its forwards pass it)."""
    out, _ = full_run
    base = json.loads((tiny_model_dir / "config.json").read_text()).get("use_cache", True)
    assert base is True and json.loads((out / "final" / "config.json").read_text())["use_cache"] is True


def test_a_checkpoint_copied_from_another_run_is_refused(full_run, tiny_cache, tiny_model_dir, tmp_path):
    """Seen in an attack: run A (β 0.1) interrupted after checkpoint-3, run B's (β 0.5)
    checkpoint copied in, and `--resume` trained on from B's weights and optimizer
    under A's record. A checkpoint now carries a hash of its run's settings."""
    out, _ = full_run
    other = tmp_path / "b"
    assert train_cli(tiny_cache, tiny_model_dir, other, "--max-steps", "6", "--save-every", "3", "--beta", "0.5").exit_code == 0
    crashed = crashed_copy(out, tmp_path / "a", 3)
    shutil.rmtree(crashed / "checkpoint-3")
    shutil.copytree(other / "checkpoint-3", crashed / "checkpoint-3")
    result = train_cli(tiny_cache, tiny_model_dir, crashed, "--max-steps", "6", "--save-every", "3", "--resume")
    assert result.exit_code == 2 and not (crashed / "final").exists()
    assert train_error_line(result.output).startswith(
        f"kto-train: error: --resume: {crashed / 'checkpoint-3'} was written by a run of other settings than {crashed}'s kto_run.json"
    ), result.output


def test_checkpoint_holds_everything_to_resume(full_run):
    out, _ = full_run
    ckpt = out / "checkpoint-3"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"):
        assert (ckpt / name).is_file(), name
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["position"] == {"global_step": 3, "epoch": 0, "step_in_epoch": 3}


def test_eval_metrics_are_tagged(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "2", "--eval-cache", str(tiny_eval_cache), "--eval-every", "1")
    assert result.exit_code == 0, result.output
    evals = [m for m in metrics(tmp_path / "r") if m["split"] == "eval"]
    assert [m["step"] for m in evals] == [1, 2]
    assert evals[0]["count/chosen"] == 8 and evals[0]["count/rejected"] == 8


def test_apo_zero_unpaired_and_sft_term(tiny_cache, tiny_model_dir, tmp_path):
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--loss", "apo_zero_unpaired", "--sft-weight", "0.1")
    assert result.exit_code == 0, result.output
    line = metrics(tmp_path / "r")[0]
    # No KL term, no KL pass: neither a kl of 0 (read as a stuck KL) nor a null padding/kl
    # (read as a diverged run) is logged, and kto-inspect run reports neither.
    assert line["sft_loss"] > 0 and not {"kl", "kl_raw", "padding/kl"} & line.keys()
    from kto.inspection.runlog import checks, read_run

    said = checks(read_run(tmp_path / "r"))
    assert "KL estimate: not logged (a loss without a KL term, or no train lines)" in said
    assert not any("NON-FINITE" in s or "stuck" in s or "not in the train lines" in s for s in said), said


def test_tokenizer_mismatch_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    # A tokenizer that maps text to other ids (here its pipeline lowercases). One that differs in
    # its chat template only is taken, with the cache's template saved (test_cache_identity_checks.py).
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Lowercase"}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    result = train_cli(tiny_cache, other, tmp_path / "r", "--max-steps", "1")
    assert result.exit_code == 2 and "tokenizer differs from the cache's (pipeline)" in result.output
    assert not (tmp_path / "r").exists()


def test_drift_past_tolerance_stops_at_step_0(tiny_cache, tiny_model_dir, tmp_path):
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--dtype", "bf16", "--drift-tolerance", "1e-6")
    assert result.exit_code == 2 and "step-0 log-probs differ" in result.output


def test_class_balance_warning_and_auto_weights(tiny_cache, tiny_model_dir, tmp_path):
    # n_D = n_U = 8: with w_U = 2 the ratio is 0.5; w_D = 2 brings it to 1.
    warned = train_cli(tiny_cache, tiny_model_dir, tmp_path / "a", "--max-steps", "1", "--undesirable-weight", "2")
    assert "--desirable-weight 2 (or --auto-weights)" in warned.output
    auto = train_cli(tiny_cache, tiny_model_dir, tmp_path / "b", "--max-steps", "1", "--undesirable-weight", "2", "--auto-weights")
    assert "desirable weight 1.0 -> 2\n" in auto.output


@pytest.mark.parametrize("weight", ["3", "0"])
def test_auto_weights_with_a_desirable_weight_given_is_refused(tiny_cache, tiny_model_dir, tmp_path, weight):
    """It chose another weight with a note, and turned a deliberate --desirable-weight 0 back on."""
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--auto-weights", "--desirable-weight", weight)
    assert result.exit_code == 2 and train_error_line(result.output) == (
        f"kto-train: error: --auto-weights: it chooses the desirable weight, so --desirable-weight {weight} would be replaced; give one of the two"
    )
    assert not (tmp_path / "r").exists()


def test_auto_weights_from_a_config_file_against_a_desirable_weight(tiny_cache, tiny_model_dir, tmp_path):
    """A file's auto_weights with --desirable-weight on the command line: refused, naming
    --no-auto-weights, which turns the file's off. A file's desirable_weight at the default 1
    (TRL dumps it whatever was meant) with --auto-weights is no contradiction."""
    auto = tmp_path / "auto.yaml"
    auto.write_text("auto_weights: true\n")
    refused = train_cli(tiny_cache, tiny_model_dir, tmp_path / "a", "--max-steps", "1", "--config", auto, "--desirable-weight", "2")
    assert refused.exit_code == 2 and train_error_line(refused.output).endswith(
        "so --desirable-weight 2 would be replaced; give one of the two (--no-auto-weights turns off a config file's)"
    )
    assert not (tmp_path / "a").exists()
    off = train_cli(tiny_cache, tiny_model_dir, tmp_path / "b", "--max-steps", "1", "--config", auto, "--desirable-weight", "2", "--no-auto-weights")
    assert off.exit_code == 0, off.output[-2000:]
    assert json.loads((tmp_path / "b" / "kto_run.json").read_text())["config"]["desirable_weight"] == 2
    dumped = tmp_path / "trl.yaml"
    dumped.write_text("desirable_weight: 1.0\nundesirable_weight: 2.0\n")
    ok = train_cli(tiny_cache, tiny_model_dir, tmp_path / "c", "--max-steps", "1", "--config", dumped, "--auto-weights")
    assert ok.exit_code == 0 and "desirable weight 1.0 -> 2\n" in ok.output, ok.output[-2000:]


def test_auto_weights_applies_the_weight_the_warning_advises(tmp_path, tiny_model_dir):
    """n_D = 8, n_U = 5: the ratio 1.6 is above 4/3. The warning advises w_D = 0.8 (ratio 1.28);
    --auto-weights applies that same 0.8, not the range's edge 0.8333… (ratio 4/3)."""
    from kto.formats.runrecord import read_run_config

    rows = [r for r in chat_rows() if r["label"]][:8] + [r for r in chat_rows() if not r["label"]][:5]
    cache = make_cache(tmp_path, rows, tiny_model_dir, "uneven.jsonl")
    warned = train_cli(cache, tiny_model_dir, tmp_path / "a", "--max-steps", "1")
    assert "--desirable-weight 0.8 (or --auto-weights)" in warned.output
    auto = train_cli(cache, tiny_model_dir, tmp_path / "b", "--max-steps", "1", "--auto-weights")
    assert "desirable weight 1.0 -> 0.8\n" in auto.output
    assert read_run_config(tmp_path / "b")["config"]["desirable_weight"] == 0.8


def test_config_file_values_and_command_line_precedence(tiny_cache, tiny_model_dir, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"cache: {tiny_cache}\nmodel: {tiny_model_dir}\nmax-steps: 2\nbeta: 0.5\n")
    out = tmp_path / "r"
    result = CliRunner().invoke(main, ["--config", str(cfg), "--out", str(out), "--max-steps", "1", "--log-every", "1"])
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in metrics(out)] == [1]
    bad = tmp_path / "bad.toml"
    bad.write_text("nope = 1\n")
    result = CliRunner().invoke(main, ["--config", str(bad)])
    assert result.exit_code == 2 and "unknown key 'nope'" in result.output


def test_matching_amp_numerics_pass_the_step0_check(tmp_path, tiny_model_dir):
    """Cache scored under bf16 autocast (kto-precompute's CUDA default), training under bf16
    autocast (kto-train's CUDA default): the drift stays within the bf16 tolerance."""
    from conftest import chat_rows, precompute_args, write_rows

    from kto.precompute.cli import main as precompute

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    cache = tmp_path / "cache"
    assert CliRunner().invoke(precompute, precompute_args(data, tiny_model_dir, cache, "--dtype", "amp-bf16")).exit_code == 0
    result = train_cli(cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--mixed-precision", "bf16")
    assert result.exit_code == 0, result.output
    assert "cache numerics amp-bf16, this run amp-bf16" in result.output
    mismatch = train_cli(cache, tiny_model_dir, tmp_path / "r2", "--max-steps", "1", "--drift-tolerance", "1e-6")
    assert mismatch.exit_code == 2 and "scored with amp-bf16 and this run computes with fp32" in mismatch.output
    assert "Match them (kto-train --mixed-precision bf16, or kto-precompute --dtype fp32 for a new cache)" in mismatch.output


def test_gradient_checkpointing_gives_the_same_run(full_run, tiny_cache, tiny_model_dir, tmp_path):
    out, _ = full_run
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "3", "--gradient-checkpointing")
    assert result.exit_code == 0, result.output
    # Step 1's loss and gradient norm depend only on the weights and the batch, not on the
    # schedule's length (3 vs 6 steps), so recomputing activations must leave them unchanged.
    a, b = metrics(out), metrics(tmp_path / "r")
    assert b[0]["loss"] == a[0]["loss"] and b[0]["grad_norm"] == pytest.approx(a[0]["grad_norm"], rel=1e-5)


def test_resume_survives_a_half_written_metrics_line(full_run, tiny_cache, tiny_model_dir, tmp_path):
    out, _ = full_run
    crashed = crashed_copy(out, tmp_path / "crashed", 3)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (crashed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:20])
    result = train_cli(tiny_cache, tiny_model_dir, crashed, "--max-steps", "6", "--save-every", "3", "--resume")
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in metrics(crashed)] == [1, 2, 3, 4, 5, 6]


def test_a_window_without_one_class_logs_null_not_zero():
    import torch

    from kto.train.step import StepStats, summarize

    stats = StepStats.zeros("cpu")._replace(
        examples=torch.tensor(2.0), loss_sum=torch.tensor(1.0), desirable=torch.tensor(2.0), reward_d_sum=torch.tensor(0.4, dtype=torch.float64)
    )
    out = summarize(stats)
    assert out["rewards/chosen"] == pytest.approx(0.2)
    assert out["rewards/rejected"] != out["rewards/rejected"]  # NaN -> null in metrics.jsonl
    assert out["rewards/margins"] != out["rewards/margins"]


def test_the_logged_loss_is_the_objective_with_the_sft_term():
    """With --sft-weight γ (LLaMA-Factory's pref_ftx) the step trains on KTO + γ · NLL; `loss`
    logs that sum, as LLaMA-Factory does, and `kto_loss` the KTO term alone. 2 rows with KTO
    losses summing to 1.0; 10 desirable tokens with NLL 25: 0.5 + 0.1 · 2.5 = 0.75."""
    import torch

    from kto.train.step import StepStats, summarize

    stats = StepStats.zeros("cpu")._replace(
        examples=torch.tensor(2.0), loss_sum=torch.tensor(1.0), sft_nll_sum=torch.tensor(25.0), sft_tokens=torch.tensor(10.0)
    )
    assert summarize(stats, sft_weight=0.1)["loss"] == pytest.approx(0.75)
    assert summarize(stats, sft_weight=0.1)["kto_loss"] == summarize(stats)["loss"] == pytest.approx(0.5)
    assert summarize(stats)["sft_loss"] == pytest.approx(2.5)


def test_an_earlier_run_is_not_overwritten_without_resume(full_run, tiny_cache, tiny_model_dir):
    out, _ = full_run
    before = (out / "metrics.jsonl").read_text()
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "1")
    assert result.exit_code == 2 and "--resume" in result.output
    assert (out / "metrics.jsonl").read_text() == before


def test_eval_cache_from_another_reference_is_refused(tiny_cache, tmp_path, tokenizer_dir):
    from conftest import make_tiny_llama, precompute_args, text_rows, write_rows

    from kto.precompute.cli import main as precompute

    other_ref = make_tiny_llama(tmp_path / "other", tokenizer_dir, seed=5)
    data = write_rows(tmp_path / "text.jsonl", text_rows())  # held-out rows: only the model differs
    other_cache = tmp_path / "other-cache"
    assert CliRunner().invoke(precompute, precompute_args(data, other_ref, other_cache)).exit_code == 0
    result = train_cli(tiny_cache, other_ref, tmp_path / "r", "--max-steps", "1", "--eval-cache", str(other_cache))
    assert result.exit_code == 2 and "--eval-cache" in result.output and "another model" in result.output


def test_resume_with_another_batch_shape_is_refused(full_run, tiny_cache, tiny_model_dir, tmp_path):
    out, _ = full_run
    crashed = crashed_copy(out, tmp_path / "crashed", 3)
    # ARGS but --batch-size 4, a setting that a resume may not change
    args = ["--batch-size", "4", "--lr", "1e-3", "--log-every", "1", "--warmup-ratio", "0.2", "--max-steps", "6", "--save-every", "3", "--resume"]
    result = run_train(tiny_cache, tiny_model_dir, crashed, *args)
    assert result.exit_code == 2 and "batch_size (2 there, 4 now)" in result.output


LINE_KEYS = ("loss", "kl", "rewards/chosen", "rewards/rejected", "count/chosen", "count/rejected", "padding/policy", "lr", "grad_norm")


def test_a_checkpoint_between_logged_steps_resumes_to_the_same_lines(tiny_cache, tiny_model_dir, tmp_path):
    """--save-every 3 with --log-every 2 (refused before as "must be a multiple"): checkpoint-3
    keeps step 3's sums, so the resumed run's step-4 line averages steps 3-4 as the uninterrupted one does."""
    args = ["--log-every", "2", "--save-every", "3", "--max-steps", "6"]
    straight = train_cli(tiny_cache, tiny_model_dir, tmp_path / "straight", *args)
    assert straight.exit_code == 0, straight.output
    crashed = crashed_copy(tmp_path / "straight", tmp_path / "crashed", 3, metrics_lines=1)
    resumed = train_cli(tiny_cache, tiny_model_dir, crashed, *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = metrics(crashed), metrics(tmp_path / "straight")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [2, 4, 6]
    for x, y in zip(a, b):
        for key in LINE_KEYS:
            assert x[key] == y[key], (x["step"], key)


def test_each_epoch_is_evaluated_and_saved(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    """--eval-each-epoch and --save-each-epoch (transformers' eval_strategy and save_strategy
    epoch): 16 rows in micro-batches of 2 are 8 steps an epoch; over 2.5 epochs (20 steps) the
    run evaluates after steps 8 and 16 and after the last, and saves checkpoint-8 and -16 between
    its logged steps (every 3), from which a resumed run logs the uninterrupted run's lines, and
    checkpoint-20 after the last step, as transformers' Trainer does."""
    args = ["--epochs", "2.5", "--log-every", "3", "--eval-each-epoch", "--save-each-epoch", "--eval-cache", str(tiny_eval_cache)]
    straight = train_cli(tiny_cache, tiny_model_dir, tmp_path / "straight", *args)
    assert straight.exit_code == 0, straight.output
    lines = metrics(tmp_path / "straight")
    assert [m["step"] for m in lines if m["split"] == "eval"] == [8, 16, 20]
    assert sorted(p.name for p in (tmp_path / "straight").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-20", "checkpoint-8"]
    trained = [m for m in lines if m["split"] == "train"]
    crashed = crashed_copy(tmp_path / "straight", tmp_path / "crashed", 8, metrics_lines=next(i for i, m in enumerate(lines) if m["step"] > 8))
    resumed = train_cli(tiny_cache, tiny_model_dir, crashed, *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    again = [m for m in metrics(crashed) if m["split"] == "train"]
    assert [m["step"] for m in again] == [m["step"] for m in trained] == [3, 6, 9, 12, 15, 18, 20]
    for x, y in zip(again, trained):
        for key in LINE_KEYS:
            assert x[key] == y[key], (x["step"], key)


def test_eval_each_epoch_needs_an_eval_cache(tiny_cache, tiny_model_dir, tmp_path):
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--eval-each-epoch")
    assert result.exit_code == 2 and train_error_line(result.output).startswith("kto-train: error: --eval-each-epoch: needs --eval-cache")
    assert not (tmp_path / "r").exists()


def test_without_dropout_a_training_forward_equals_an_evaluation_one(tiny_model_dir, tmp_path, tokenizer_dir):
    """What lets the step-0 check read the first step's own forward: after disable_dropout, even
    a model built with attention dropout computes the same log-probs in train() and eval()."""
    from conftest import make_tiny_llama

    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.sources import resolve_source
    from kto.train.model import disable_dropout

    lm = load_causal_lm(resolve_source(str(make_tiny_llama(tmp_path / "m", tokenizer_dir, attention_dropout=0.5))), dtype=torch.float32)
    model = CompletionLogps(lm)
    ids = torch.arange(3, 40).reshape(1, -1)
    score = torch.zeros_like(ids, dtype=torch.bool)
    score[:, 10:] = True
    assert not torch.equal(model.train()(ids, score), model.eval()(ids, score))  # dropout on: they differ
    disable_dropout(lm)
    assert torch.equal(model.train()(ids, score), model.eval()(ids, score))


def test_step0_check_reads_the_first_forward_unless_dropout_is_kept(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    import kto.train.loop as loop

    separate = []
    inner = loop.step0_drift
    monkeypatch.setattr(loop, "step0_drift", lambda model, batch: separate.append(model.training) or inner(model, batch))
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "a", "--max-steps", "1")
    assert result.exit_code == 0, result.output
    assert_step0_agrees(result.output, tiny_cache)
    assert separate == []  # folded into the first step's forward
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "b", "--max-steps", "1", "--keep-dropout")
    assert result.exit_code == 0 and "step-0 check: max |Δ log p| per token vs cache" in result.output
    assert separate == [False]  # its own pass, in evaluation mode


def test_drift_stops_the_run_before_any_update(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    import kto.train.loop as loop

    steps = []
    monkeypatch.setattr(loop, "apply_update", lambda *a, **k: steps.append(1))
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--dtype", "bf16", "--drift-tolerance", "1e-6")
    assert result.exit_code == 2 and "step-0 log-probs differ" in result.output
    assert steps == [] and not (tmp_path / "r" / "final").exists()


def test_full_fine_tuning_of_fp16_weights_is_refused_before_any_step(tiny_cache, tiny_model_dir, tmp_path):
    """fp16 weights put AdamW's moments in fp16 (eps 1e-8 rounds to 0): on CPU the loss was NaN at
    step 2 at any learning rate. Refused on one line, nothing written; LoRA over fp16 weights runs."""
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "full", "--max-steps", "1", "--dtype", "fp16")
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1].startswith("kto-train: error: --dtype fp16: full fine-tuning of fp16 weights")
    assert not (tmp_path / "full").exists()
    lora = train_cli(tiny_cache, tiny_model_dir, tmp_path / "lora", "--max-steps", "2", "--dtype", "fp16", "--lora-r", "4")
    assert lora.exit_code == 0, lora.output[-2000:]


def test_fitted_shape_lowers_a_batch_or_accumulation_the_cache_cannot_fill():
    from kto.train.data import MicroBatchShape, fitted_shape

    assert fitted_shape(16, MicroBatchShape(8, 2, 1)) == (MicroBatchShape(8, 2, 1), [])
    assert fitted_shape(5, MicroBatchShape(8, 4, 2)) == (
        MicroBatchShape(5, 1, 2),
        ["--batch-size 8: the cache holds 5 rows; micro-batches of 5", "--grad-accum 4: the cache's 5 rows fill 1 micro-batch of 5; steps of 1"],
    )
    assert fitted_shape(16, MicroBatchShape(2, 100000000, 1))[0] == MicroBatchShape(2, 8, 1)


def test_a_batch_larger_than_the_cache_runs_on_its_rows_with_a_note(tiny_cache, tiny_model_dir, tmp_path):
    """As a DataLoader keeps its short last batch (HF Trainer, TRL): the default --batch-size 8 on
    a small cache was refused; now the 16 rows make one micro-batch and the record holds it."""
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "run", "--batch-size", "100000", "--grad-accum", "3", "--max-steps", "1", "--log-every", "1")
    assert result.exit_code == 0, result.output[-2000:]
    assert "note: --batch-size 100000: the cache holds 16 rows; micro-batches of 16" in result.output
    assert "note: --grad-accum 3: the cache's 16 rows fill 1 micro-batch of 16; steps of 1" in result.output
    record = json.loads((tmp_path / "run" / "kto_run.json").read_text())
    assert (record["config"]["batch_size"], record["config"]["grad_accum"]) == (16, 1)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["count/chosen"] + line["count/rejected"] == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "--seed -1: must be in [0, 2**32)"),
        (["--seed", str(2**64)], f"--seed {2**64}: must be in [0, 2**32)"),
        (["--drift-tolerance", "-1"], "--drift-tolerance -1.0: must not be negative"),
        (["--eval-every", "2"], "--eval-every 2: needs --eval-cache"),
    ],
    ids=["negative-seed", "huge-seed", "drift-tolerance", "eval-every-without-eval-cache"],
)
def test_flags_that_cannot_run_are_refused_before_anything_is_written(tiny_cache, tiny_model_dir, tmp_path, args, message):
    """Seen in an attack on the CLI: --grad-accum 100000000 on a 16-row cache built a plan slot
    by slot (22 GB after 12 minutes, SIGTERM ignored), --batch-size 100000 ran filler rows
    through the model, --seed -1 ended in numpy's traceback, --drift-tolerance -1 failed the
    step-0 check after loading the model. Each is one line now, and --out is not created."""
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", "--max-steps", "1", *args)
    assert result.exit_code == 2 and train_error_line(result.output).startswith(f"kto-train: error: {message}"), result.output
    assert not (tmp_path / "run").exists()


def test_a_stop_between_two_lines_keeps_the_next_line_whole(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """Seen in an attack on the CLI: Ctrl-C after step 2 of a 4-step log window saved
    checkpoint-2, and the resumed run's step-4 line averaged steps 3-4 only (loss 0.50433 over
    12 rows against 0.50260 over 20 uninterrupted). The checkpoint now carries the unlogged
    steps' sums: the line equals the uninterrupted one (tokens/s aside: it is this process's)."""
    import signal

    from kto.train import loop

    args = ["--batch-size", "2", "--lr", "1e-3", "--max-steps", "8", "--log-every", "4", "--save-every", "4"]
    straight = run_train(tiny_cache, tiny_model_dir, tmp_path / "straight", *args)
    assert straight.exit_code == 0, straight.output

    class StopAfterStep2(loop.StopSignals):
        def requested(self):
            self.calls = getattr(self, "calls", 0) + 1
            return signal.SIGTERM if self.calls == 2 else None

    with monkeypatch.context() as m:
        m.setattr(loop, "StopSignals", StopAfterStep2)
        stopped = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *args)
    assert stopped.exit_code == 143 and (tmp_path / "r" / "checkpoint-2").is_dir(), stopped.output
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # it appears with its first line
    resumed = run_train(tiny_cache, tiny_model_dir, tmp_path / "r", *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = metrics(tmp_path / "r"), metrics(tmp_path / "straight")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [4, 8]
    for x, y in zip(a, b):
        for key in ("loss", "kl", "rewards/chosen", "rewards/rejected", "count/chosen", "count/rejected", "padding/policy", "lr", "grad_norm"):
            assert x[key] == y[key], (x["step"], key)
