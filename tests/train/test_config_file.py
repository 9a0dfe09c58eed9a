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


def test_transformers_adam_keys_reach_adamw_as_floats(tmp_path, captured):
    """A TRL or LLaMA-Factory file's adam_beta2: 0.95 was refused (the optimizer was fixed);
    adam_epsilon: 1e-6 is text in YAML 1.1."""
    result = run(tmp_path, "learning_rate: 1.0e-6\nadam_beta1: 0.8\nadam_beta2: 0.95\nadam_epsilon: 1e-6\n")
    assert result.exit_code == 0, result.output
    cfg = captured[0]
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_epsilon) == (0.8, 0.95, 1e-6) and type(cfg.adam_epsilon) is float


@pytest.mark.parametrize(
    "name, text, said",
    [
        ("run.yaml", "lr: 2001-12-14\n", "lr: 2001-12-14 is a date; expected float"),
        ("run.toml", "lr = 1979-05-27\n", "lr: 1979-05-27 is a date; expected float"),
        ("run.toml", "lr = 07:32:00\n", "lr: 07:32:00 is a time; expected float"),
    ],
)
def test_a_date_where_a_number_goes_is_one_line(tmp_path, captured, name, text, said):
    """YAML and TOML read an unquoted date as a date: float() of it was a TypeError traceback."""
    result = run(tmp_path, text, name)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip() == f"kto-train: error: --config {tmp_path / name}: {said}"


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, captured):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"lr: 1.0e-6\nbeta: \xff\n")
    result = CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.output.strip() == f"kto-train: error: --config {path}: not valid UTF-8 at byte 17"


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


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("kto-train: error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_wrong_number_in_another_tools_key_names_that_key_not_a_flag(tmp_path, captured):
    """`logging_steps: 2.5` was refused as "logging-steps", a flag that does not exist."""
    line = error_line(run(tmp_path, "logging_steps: 2.5\n"))
    assert line == f"kto-train: error: --config {tmp_path / 'run.yaml'}: logging_steps: 2.5 is not a whole number"


def test_warmup_steps_below_one_is_a_warmup_ratio(tmp_path, captured):
    """transformers 5's `warmup_steps: 0.1` was refused as "not a whole number"."""
    result = run(tmp_path, "warmup_steps: 0.1\nlearning_rate: 1.0e-6\n")
    assert result.exit_code == 0, result.output
    assert (captured[0].warmup_ratio, captured[0].warmup_steps) == (0.1, 0)


@pytest.mark.parametrize(
    ("text", "extra", "ratio"),
    [
        ("lr: 1.0e-6\nwarmup_steps: 0\n", (), 0.0),  # our names only: no TRL key to bring transformers' defaults
        ("lr: 1.0e-6\n", ("--warmup-steps", "0"), 0.0),
        ("lr: 1.0e-6\nwarmup_ratio: 0.2\n", ("--warmup-steps", "0"), 0.2),  # the ratio given: transformers takes it
        ("lr: 1.0e-6\n", (), 0.1),  # neither given: kto-train's own default
        ("lr: 1.0e-6\n", ("--warmup-steps", "0", "--warmup-ratio", "0.3"), 0.3),
    ],
)
def test_an_explicit_zero_warmup_steps_without_a_ratio_warms_up_for_none(tmp_path, captured, text, extra, ratio):
    """`warmup_steps: 0` in a file of our names, or `--warmup-steps 0`, took kto-train's
    warmup_ratio 0.1 silently: a tenth of the run warmed up where transformers warms up none."""
    result = run(tmp_path, text, "run.yaml", *extra)
    assert result.exit_code == 0, result.output
    assert (captured[0].warmup_ratio, captured[0].warmup_steps) == (ratio, 0)
    said = "without a warmup ratio: no warmup, as transformers reads it" in result.output
    assert said == (ratio == 0.0)


@pytest.mark.parametrize("ratio", [0.1, 0.0])
def test_a_resume_takes_the_warmup_ratio_its_run_recorded_beside_zero_warmup_steps(tmp_path, captured, ratio):
    """A run begun with --warmup-steps 0 before that meant no warmup recorded warmup_ratio 0.1,
    and its resume with the same command was refused (0.1 there, 0.0 now); one begun since
    recorded 0.0. Each resumes as it ran."""
    import json

    from kto.formats.runrecord import KIND, VERSION

    (tmp_path / "o").mkdir()
    record = {"kind": KIND, "version": VERSION, "config": {"warmup_steps": 0, "warmup_ratio": ratio}, "derived": {}}
    (tmp_path / "o" / "kto_run.json").write_text(json.dumps(record))
    result = run(tmp_path, "lr: 1.0e-6\n", "run.yaml", "--warmup-steps", "0", "--resume")
    assert result.exit_code == 0, result.output
    assert captured[0].warmup_ratio == ratio and "no warmup, as transformers reads it" not in result.output


def test_eval_only_says_nothing_of_warmup(tmp_path, captured):
    result = run(tmp_path, "lr: 1.0e-6\n", "run.yaml", "--warmup-steps", "0", "--eval-only")
    assert "no warmup, as transformers reads it" not in result.output


def test_step_shares_resolve_against_max_steps_or_are_refused_naming_the_key(tmp_path, captured):
    """transformers 5: `logging_steps: 0.25` is ⌈0.25 × total⌉ steps. kto-train knows the total
    before reading the cache only from max_steps; without it the key is refused, as written."""
    result = run(tmp_path, "logging_steps: 0.25\nsave_steps: 0.5\nmax_steps: 25\n")
    assert result.exit_code == 0, result.output
    # ⌈25 × 0.25⌉ = 7, ⌈25 × 0.5⌉ = 13, as transformers: a checkpoint between logged steps keeps
    # the steps not yet logged (it was moved down to 7, a multiple of the logging cadence).
    assert (captured[0].log_every, captured[0].save_every) == (7, 13)
    assert "logging_steps: 0.25 -> every 7 steps (⌈max_steps 25 × 0.25⌉, as transformers)" in result.output
    assert "a multiple of" not in result.output
    path = tmp_path / "run.yaml"
    line = error_line(run(tmp_path, "logging_steps: 0.25\nlearning_rate: 1.0e-6\n"))
    assert line == (
        f"kto-train: error: --config {path}: logging_steps: 0.25: a share of the total steps (transformers 5), which kto-train "
        "knows only once it reads the cache; write logging_steps as a whole number of steps, or give max_steps"
    )
    assert "logging-steps" not in line
    result = run(tmp_path, "logging_steps: 0.25\n", "run.yaml", "--log-every", "4")  # the command line wins
    assert result.exit_code == 0, result.output
    assert captured[-1].log_every == 4


def test_transformers_save_default_is_kept_between_logged_steps(tmp_path, captured):
    """A TRL file silent on save_steps saves every 500 steps (transformers' default), as there,
    even where 500 is no multiple of its logging_steps (it was moved down to 480)."""
    result = run(tmp_path, "learning_rate: 1.0e-6\nlogging_steps: 30\n")
    assert result.exit_code == 0, result.output
    cfg = captured[0]
    assert (cfg.save_every, cfg.log_every, cfg.warmup_ratio, cfg.seed, cfg.epochs) == (500, 30, 0.0, 42, 3.0)


def test_precompute_keys_that_disagree_with_the_cache_are_warned_about(tmp_path, captured, tiny_cache):
    """tiny_cache was made with --max-length 64 (so max_prompt_length 32): a file that says
    otherwise trains on rows cut to other lengths than it asks for, which one warning line says.
    Not refused: `kto-precompute --config FILE --max-length 64` (a flag over the file) makes this
    very cache on purpose."""
    path = tmp_path / "run.yaml"
    path.write_text("max_length: 128\ncutoff_len: 128\nlearning_rate: 1.0e-6\n")
    args = ["--config", str(path), "--cache", str(tiny_cache), "--model", "m", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (
        f"kto-train: warning: --config {path}: max_length: 128 (the cache's max_length: 64); cutoff_len: 128 (the cache's max_length: 64): "
        f"the cache {tiny_cache} was made with other values than the file's; kto-train trains on the cache as it is "
        f"(rerun kto-precompute --config {path} --overwrite if the file is what you meant)"
    ) in result.output
    assert len(captured) == 1
    captured.clear()
    path.write_text("max_length: 64\nmax_prompt_length: 32\nlearning_rate: 1.0e-6\n")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "kto-precompute's keys, ignored by kto-train: max_length, max_prompt_length" in result.output


def invoke_with_model(tmp_path, text: str, model, *extra: str):
    path = tmp_path / "trl.yaml"
    path.write_text(text)
    return CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--model", str(model), "--out", str(tmp_path / "o"), *extra])


def test_use_peft_without_targets_takes_peft_s_default_for_the_model_type(tmp_path, captured, tiny_model_dir):
    result = invoke_with_model(tmp_path, "use_peft: true\nlearning_rate: 1.0e-6\n", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert captured[0].lora_target_modules == "q_proj,v_proj" and captured[0].lora_r == 16
    assert (
        "use_peft: true -> LoRA on (lora_r 16, lora_alpha 32, lora_dropout 0.05 (off while dropout is, as TRL's disable_dropout turns it off), lora_target_modules q_proj,v_proj (peft's default for llama)"
        in result.output
    )
    for extra, text, expected in (
        ((), "use_peft: true\nlora_target_modules: all-linear\n", None),
        ((), "use_peft: true\nlora_target_modules: [q_proj, o_proj]\n", "q_proj,o_proj"),
        (("--lora-target-modules", "k_proj"), "use_peft: true\n", "k_proj"),
    ):  # (--lora-r 0 over use_peft: true is refused: test_config_errors_name_keys.py)
        result = invoke_with_model(tmp_path, text, tiny_model_dir, *extra)
        assert result.exit_code == 0, result.output
        assert captured[-1].lora_target_modules == expected, (extra, text)


def test_use_peft_on_a_model_type_peft_has_no_default_for_is_refused(tmp_path, captured):
    model = tmp_path / "odd"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-type"}')
    line = error_line(invoke_with_model(tmp_path, "use_peft: true\n", model))
    assert line == (
        f"kto-train: error: --config {tmp_path / 'trl.yaml'}: use_peft: true: peft has no default LoRA targets for model type no-such-type "
        "(TRL stops there too); give lora_target_modules (all-linear, or a list of module names)"
    )


def test_a_trl_file_silent_on_targets_and_warmup_trains_as_trl_would(tmp_path, tiny_cache, tiny_model_dir):
    """The real run: LoRA wraps exactly peft's Llama default (q_proj, v_proj), and with
    transformers' warmup of 0 the first step runs at the configured lr (our 10 % warmup of 20
    steps took two steps to reach it: 2.5e-6 after step 1)."""
    import json

    from conftest import metrics, run_train
    from safetensors import safe_open

    out = tmp_path / "run"
    path = tmp_path / "trl.yaml"
    text = "use_peft: true\nlearning_rate: 5.0e-6\nlr_scheduler_type: constant_with_warmup\nmax_steps: 20\nlogging_steps: 1\nper_device_train_batch_size: 4\n"
    path.write_text(text)
    result = run_train(tiny_cache, tiny_model_dir, out, "--config", str(path))
    assert result.exit_code == 0, result.output
    assert metrics(out)[0]["step"] == 1 and metrics(out)[0]["lr"] == 5e-6
    record = json.loads((out / "kto_run.json").read_text())["config"]
    assert (record["warmup_ratio"], record["seed"], record["lora_target_modules"]) == (0.0, 42, "q_proj,v_proj")
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    with safe_open(str(out / "final" / "adapter_model.safetensors"), "pt") as f:
        wrapped = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in f.keys()}
    assert wrapped == {"q_proj", "v_proj"}


def test_save_strategy_no_keeps_transformers_save_default_out(tmp_path, captured):
    """`save_strategy: no` saves nothing in TRL; the 500-step default must not bring checkpoints back."""
    for strategy, every in (("no", 0), ("epoch", 0), ("steps", 500)):
        result = run(tmp_path, f"learning_rate: 1.0e-6\nlogging_steps: 10\nsave_strategy: {strategy}\n")
        assert result.exit_code == 0, result.output
        assert captured.pop().save_every == every, strategy


def test_resume_keeps_what_the_run_recorded_for_values_the_file_left_out(tmp_path, captured):
    """A run started before transformers' defaults applied here (seed 0, warmup 0.1) resumes as it
    ran: a value the file never wrote takes the record's; one the file writes does not."""
    from kto.formats.runrecord import write_run_config

    out = tmp_path / "o"
    out.mkdir()
    write_run_config(out, {"seed": 0, "warmup_ratio": 0.1, "save_every": 0, "lr": 2e-6}, {})
    result = run(tmp_path, "learning_rate: 1.0e-6\nlogging_steps: 10\n", "run.yaml", "--resume")
    assert result.exit_code == 0, result.output
    cfg = captured.pop()
    assert (cfg.seed, cfg.warmup_ratio, cfg.save_every, cfg.lr) == (0, 0.1, 0, 1e-6)  # lr: the file's own
    assert "seed not in the file: the run's own 0, not the default 42" in result.output
    result = run(tmp_path, "learning_rate: 1.0e-6\nlogging_steps: 10\n", "run.yaml", "--resume", "--seed", "7")
    assert captured.pop().seed == 7  # the command line wins over both


def test_resume_of_a_llama_factory_run_takes_the_recorded_rank_and_its_alpha(tmp_path, captured):
    """LLaMA-Factory's alpha is 2 × rank: a run made with --lora-r 16 (alpha 32) and resumed from
    the file alone keeps both, not rank 16 with the default rank's alpha 16."""
    from kto.formats.runrecord import write_run_config

    out = tmp_path / "o"
    out.mkdir()
    write_run_config(out, {"lora_r": 16, "lora_alpha": 32.0}, {})
    result = run(tmp_path, "stage: kto\nfinetuning_type: lora\nlearning_rate: 1.0e-6\nlogging_steps: 10\n", "lf.yaml", "--resume")
    assert result.exit_code == 0, result.output
    cfg = captured.pop()
    assert (cfg.lora_r, cfg.lora_alpha) == (16, 32.0)


def test_their_names_take_the_values_our_names_take(tmp_path, captured):
    """`resume_from_checkpoint: true` was refused ("True is true/false; expected text") and
    `lr_scheduler_kwargs: {min_lr_rate: 0.1}` ("expected one text value, got a mapping"): the
    special cases keyed on the file's key, not the option it sets."""
    result = run(tmp_path, "resume_from_checkpoint: true\nlr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr_rate: 0.1}\n")
    assert result.exit_code == 0, result.output
    cfg = captured.pop()
    assert cfg.resume is True and cfg.lr_schedule == "cosine_with_min_lr" and cfg.lr_schedule_kwargs == {"min_lr_rate": 0.1}
    result = run(tmp_path, "resume_from_checkpoint: false\nlr_scheduler_kwargs: '{\"min_lr_rate\": 0.2}'\n")
    assert result.exit_code == 0, result.output
    cfg = captured.pop()
    assert cfg.resume is False and cfg.lr_schedule_kwargs == {"min_lr_rate": 0.2}
    line = error_line(run(tmp_path, "lr_scheduler_kwargs: [1, 2]\n"))
    assert line == f"kto-train: error: --config {tmp_path / 'run.yaml'}: lr_scheduler_kwargs: expected one text value, got a list"


def test_pref_ftx_says_what_it_computes_on_the_command_line(tmp_path, captured):
    result = run(tmp_path, "stage: kto\npref_ftx: 0.5\n", "lf.yaml")
    assert result.exit_code == 0, result.output
    assert captured[0].sft_weight == 0.5  # as written: not rescaled
    assert f"kto-train: --config {tmp_path / 'lf.yaml'}: pref_ftx: 0.5 -> sft_weight 0.5, not rescaled: " in result.output
    assert "double the value to match" in result.output


def test_eval_strategy_epoch_needs_an_eval_set_as_in_transformers(tmp_path, captured):
    """transformers evaluates nothing without an eval set, so `eval_strategy: epoch` alone is
    inert (a line says so); with --eval-cache it evaluates after each epoch."""
    text = "eval_strategy: epoch\nsave_strategy: epoch\nlearning_rate: 1.0e-6\n"
    result = run(tmp_path, text)
    assert result.exit_code == 0, result.output
    assert (captured[0].eval_each_epoch, captured[0].save_each_epoch, captured[0].save_every) == (False, True, 0)
    assert "eval_strategy: ignored (no eval set: give --eval-cache, val_size, or eval_strategy with dataset_test_split)" in result.output
    result = run(tmp_path, text, "run.yaml", "--eval-cache", "evalset")
    assert result.exit_code == 0, result.output
    assert captured[1].eval_each_epoch and "eval_strategy: ignored" not in result.output


def test_a_trl_file_checkpoints_gradients_but_a_run_recorded_without_resumes_without(tmp_path, captured):
    """KTOConfig's gradient_checkpointing default is true: a TRL file silent on it now checkpoints,
    and a run recorded with it off (before this default applied) resumes off, said in a line."""
    from kto.formats.runrecord import write_run_config

    result = run(tmp_path, "learning_rate: 1.0e-6\nlogging_steps: 10\n")
    assert result.exit_code == 0, result.output
    assert captured.pop().gradient_checkpointing is True
    out = tmp_path / "o"
    out.mkdir()
    write_run_config(out, {"gradient_checkpointing": False}, {})
    result = run(tmp_path, "learning_rate: 1.0e-6\nlogging_steps: 10\n", "run.yaml", "--resume")
    assert result.exit_code == 0, result.output
    assert captured.pop().gradient_checkpointing is False
    assert "gradient_checkpointing not in the file: the run's own False, not the default True" in result.output


def test_transformers_switches_reach_the_config(tmp_path, captured):
    """`fsdp: "full_shard auto_wrap"` failed "not a valid boolean"; `fp16: true` and
    `push_to_hub: false` with hub_model_id were ignored (the latter uploaded anyway)."""
    result = run(tmp_path, "fsdp: full_shard auto_wrap\nfp16: true\npush_to_hub: false\nhub_model_id: me/x\n")
    assert result.exit_code == 0, result.output
    cfg = captured.pop()
    assert (cfg.fsdp, cfg.mixed_precision, cfg.push_to_hub, cfg.hub_private) == (True, "fp16", None, False)
    result = run(tmp_path, "push_to_hub: true\nhub_model_id: me/x\nhub_private_repo: true\n")
    assert result.exit_code == 0, result.output
    cfg = captured.pop()
    assert (cfg.push_to_hub, cfg.hub_private) == ("me/x", True)
    line = error_line(run(tmp_path, "push_to_hub: true\n"))
    assert "push_to_hub: true without hub_model_id" in line


def test_the_hub_keys_of_a_file_under_push_to_hub_on_the_command_line(tmp_path, captured):
    """`push_to_hub: true` without hub_model_id needs a repo: --push-to-hub gives it (it was
    refused even then); `hub_private_repo: true` with the file's upload off makes a
    --push-to-hub repo private (it was dropped: the repo was created public)."""
    line = error_line(run(tmp_path, "push_to_hub: true\nlearning_rate: 1.0e-6\n"))
    assert "push_to_hub: true without hub_model_id" in line and "(or --push-to-hub ORG/NAME)" in line
    result = run(tmp_path, "push_to_hub: true\nlearning_rate: 1.0e-6\n", "run.yaml", "--push-to-hub", "org/x")
    assert result.exit_code == 0, result.output
    assert (captured[-1].push_to_hub, captured[-1].hub_private) == ("org/x", False)
    result = run(tmp_path, "hub_private_repo: true\nlearning_rate: 1.0e-6\n", "run.yaml", "--push-to-hub", "org/x")
    assert result.exit_code == 0, result.output
    assert (captured[-1].push_to_hub, captured[-1].hub_private) == ("org/x", True)
    assert "hub_private_repo: true -> --push-to-hub org/x is created private" in result.output
    result = run(tmp_path, "hub_private_repo: true\nlearning_rate: 1.0e-6\n")  # no upload anywhere: nothing to make private
    assert result.exit_code == 0 and (captured[-1].push_to_hub, captured[-1].hub_private) == (None, False), result.output


def test_a_dumped_hub_token_is_never_printed(tmp_path, captured):
    result = run(tmp_path, "hub_token: hf_SECRETabc\nlearning_rate: 1.0e-6\n")
    assert result.exit_code == 0, result.output
    assert "SECRET" not in result.output.upper() and "hub_token: <set>: ignored" in result.output


def test_resume_of_a_run_made_before_bf16_was_read_keeps_its_precision(tmp_path, captured):
    """A run of a `bf16: true` file made when kto-train ignored bf16 trained with auto: resumed,
    it was refused (mixed_precision auto there, bf16 now); it keeps auto, said in a line. A new
    run of the file, or a resume of one recorded with bf16, takes bf16."""
    from kto.formats.runrecord import write_run_config

    text = "bf16: true\nlearning_rate: 1.0e-6\nlogging_steps: 10\n"
    out = tmp_path / "o"
    out.mkdir()
    write_run_config(out, {"mixed_precision": "auto"}, {})
    result = run(tmp_path, text, "run.yaml", "--resume")
    assert result.exit_code == 0, result.output
    assert captured.pop().mixed_precision == "auto"
    assert "mixed_precision: the run was recorded with 'auto', before bf16 was read: resumed so, not 'bf16'" in result.output
    write_run_config(out, {"mixed_precision": "bf16"}, {})
    assert run(tmp_path, text, "run.yaml", "--resume").exit_code == 0 and captured.pop().mixed_precision == "bf16"
    assert run(tmp_path, text, "run.yaml", "--resume", "--mixed-precision", "no").exit_code == 0 and captured.pop().mixed_precision == "no"
    # A run recorded with another choice than auto is not overridden: the resume compares it
    # (train/rundir.py refuses a difference), with no line claiming the key was unread.
    result = run(tmp_path, "fp16: true\nlearning_rate: 1.0e-6\n", "run.yaml", "--resume")
    assert result.exit_code == 0 and captured.pop().mixed_precision == "fp16" and "before" not in result.output


def test_log_every_0_without_an_eval_set_is_no_refusal(tmp_path, captured):
    """--log-every 0 over evaluations derived from logging_steps is refused only where there is
    an eval set to evaluate (the advice, --eval-every, needs one)."""
    path = tmp_path / "run.yaml"
    path.write_text("eval_strategy: steps\nlogging_steps: 10\n")
    result = CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o"), "--log-every", "0"])
    assert result.exit_code == 0, result.output
    assert (captured[0].log_every, captured[0].eval_every) == (0, 0)


def test_no_hub_private_on_the_command_line_wins_over_the_file(tmp_path, captured):
    """A file's hub_private_repo: true could not be turned off: --hub-private had no --no- form."""
    text = "push_to_hub: true\nhub_model_id: org/x\nhub_private_repo: true\nlearning_rate: 1.0e-6\n"
    result = run(tmp_path, text, "run.yaml", "--no-hub-private")
    assert result.exit_code == 0, result.output
    assert (captured[-1].push_to_hub, captured[-1].hub_private) == ("org/x", False)


def test_a_run_record_given_to_config_runs_that_run_again(tmp_path, tiny_cache, tiny_model_dir):
    """`--config RUN/kto_run.json --out NEW` takes the recorded run's settings (its --out and
    --resume left out): the same settings train the same losses and weights (the command line
    wins over it as over any --config file). Before, the record's own keys
    (config, derived, kind) were refused as unknown, and a run could be repeated only by copying
    its settings into a YAML file by hand."""
    import json

    import torch
    from conftest import metrics, run_train
    from safetensors.torch import load_file

    first = tmp_path / "first"
    result = run_train(tiny_cache, tiny_model_dir, first, "--batch-size", "2", "--max-steps", "3", "--lr", "1e-3", "--auto-weights", "--warmup-steps", "1")
    assert result.exit_code == 0, result.output
    recorded = first / "kto_run.json"
    # The record holds the weight --auto-weights chose (1 on these balanced rows; 0.5 here as on
    # 8 desirable rows to 4): given back beside --auto-weights, it was refused as one it replaces.
    record = json.loads(recorded.read_text())
    assert record["config"]["auto_weights"] is True
    record["config"]["desirable_weight"] = 0.5
    recorded.write_text(json.dumps(record))
    again = CliRunner().invoke(main, ["--config", str(recorded), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert f"--config {recorded}: the settings of the kto-train run it records (its --out, --resume and --push-to-hub left out)" in again.output
    assert [m["loss"] for m in metrics(tmp_path / "again")] == [m["loss"] for m in metrics(first)]
    a, b = load_file(first / "final" / "model.safetensors"), load_file(tmp_path / "again" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    settings = lambda run: {k: v for k, v in json.loads((run / "kto_run.json").read_text())["config"].items() if k != "out"}
    assert settings(tmp_path / "again") == {**settings(first), "desirable_weight": 1.0}
    # Without --out: the record's own is left out, so the command asks for one rather than reach the first run.
    assert "--out is required" in CliRunner().invoke(main, ["--config", str(recorded)]).output


def test_a_run_records_settings_leave_out_its_push_and_find_its_paths_from_where_it_ran(tmp_path, monkeypatch):
    """Seen in review: a re-run from the record of a run with --push-to-hub pushed over that
    run's model on the Hub; its relative --cache was looked for from wherever the re-run was
    typed; and where the run's folder no longer held it but the current one did, another cache
    was trained on without a word. The record's `cwd` finds it; a name found only here is read
    from here with a line saying so; a name found nowhere (a hub id) stays as typed."""
    from kto.formats.config_file import run_record_settings

    (tmp_path / "c").mkdir()
    config = {
        "cache": "c",
        "model": "HuggingFaceTB/SmolLM2-135M",
        "eval_cache": None,
        "out": "r",
        "resume": False,
        "push_to_hub": "me/m",
        "hub_private": True,
        "beta": 0.2,
    }
    settings, moved = run_record_settings({"config": config, "cwd": str(tmp_path)})
    assert settings == {"cache": str(tmp_path / "c"), "model": "HuggingFaceTB/SmolLM2-135M", "eval_cache": None, "beta": 0.2} and moved == []
    assert run_record_settings({"config": config}) == ({**settings, "cache": "c"}, [])  # no cwd recorded (a record made before it)
    here = tmp_path / "here"
    (here / "c").mkdir(parents=True)
    monkeypatch.chdir(here)
    gone = str(tmp_path / "gone")
    settings, moved = run_record_settings({"config": config, "cwd": gone})
    assert settings["cache"] == "c" and moved == [f"--cache c is not in {gone}, where the run started: read from here, which may hold another cache"]


def test_a_run_record_given_to_kto_precompute_says_whose_it_is(tmp_path):
    import json

    from kto.precompute.cli import main as precompute

    record = tmp_path / "kto_run.json"
    record.write_text(json.dumps({"kind": "kto-train run", "version": 1, "config": {"beta": 0.1}, "derived": {}}))
    result = CliRunner().invoke(precompute, ["--config", str(record), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"kto-precompute: error: --config {record}: a kto-train run record (its settings re-run with kto-train --config {record}), not kto-precompute's settings"
    )


def test_a_development_builds_versions_in_derived_still_resume():
    """Builds between 64f819c and e23a8ed kept the versions under `derived`: a run they made
    resumes (no difference named), and its versions are the ones the run began with."""
    from kto.train.resume_record import began_with, record_differences

    versions = {"kto-offline": "0.1.0", "torch": "2.0.0", "transformers": "5.0.0"}
    saved = {"config": {"beta": 0.1}, "derived": {"total_steps": 2, "versions": versions}}
    assert record_differences(saved, {"config": {"beta": 0.1}, "derived": {"total_steps": 2}}) == []
    assert began_with(saved) == versions
