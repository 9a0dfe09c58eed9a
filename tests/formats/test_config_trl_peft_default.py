"""A file in TRL's names that keeps a LoRA rank but leaves `use_peft` out (docs/migrating.md).

TRL's ModelConfig.use_peft defaults to false: TRL ignores lora_r then and trains every weight.
lora_r is also kto-train's own key, which turns LoRA on. Such a file trained LoRA here and every
weight there, silently; it is refused now in one line asking for use_peft: true or false."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kto.formats.config_keys import TRAIN
from kto.formats.config_names import resolve

# The hunter's file (a.yaml): transformers' names beside TRL's ModelConfig LoRA keys, no use_peft.
TRL_LORA = {
    "model_name_or_path": "m",
    "output_dir": "o",
    "max_steps": 1,
    "learning_rate": 1.0e-6,
    "per_device_train_batch_size": 2,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_target_modules": ["q_proj", "v_proj"],
}


RANK_WITHOUT_USE_PEFT = (
    "lora_r: 16 without use_peft: in TRL's names (model_name_or_path, output_dir, learning_rate, …) LoRA is off unless use_peft: true "
    "(TRL's default is false: it ignores lora_r and trains every weight), while kto-train's own lora_r turns LoRA on; write "
    "use_peft: true to train LoRA adapters, or use_peft: false to train every weight as TRL does"
)


def test_a_trl_file_with_a_rank_but_no_use_peft_leaves_the_refusal_to_the_command_line():
    """resolve cannot see the command line, where --lora-r settles the rank and --eval-only reads
    none: it records the refusal, which kto-train makes once the flags are known."""
    resolved = resolve(TRL_LORA, TRAIN)
    assert resolved.rank_needs_use_peft == RANK_WITHOUT_USE_PEFT
    assert "\n" not in resolved.rank_needs_use_peft


def test_use_peft_either_way_decides_as_trl_does():
    off = resolve({**TRL_LORA, "use_peft": False}, TRAIN)
    assert off.values["lora_r"] == 0
    assert "use_peft: false -> every weight is trained (lora_r 0)" in off.notes
    assert "lora_r: 16 ignored (lora_r 0, as the key that turns it off says)" in off.notes
    on = resolve({**TRL_LORA, "use_peft": True}, TRAIN)
    assert (on.values["lora_r"], on.values["lora_alpha"], on.values["lora_target_modules"]) == (16, 32, "q_proj,v_proj")


@pytest.mark.parametrize(
    "raw",
    [
        {"model": "m", "lr": 1e-6, "lora_r": 16, "lora_alpha": 32},  # kto-train's own names: its own lora_r
        {"model_name_or_path": "m", "learning_rate": 1e-6, "lora_r": 0},  # no LoRA either way
        {"model_name_or_path": "m", "learning_rate": 1e-6},  # no rank: every weight, as TRL
        {"stage": "kto", "finetuning_type": "lora", "lora_r": 16},  # LLaMA-Factory's: finetuning_type decides
    ],
)
def test_files_whose_rank_means_one_thing_are_taken(raw):
    resolved = resolve(raw, TRAIN)
    assert resolved.values.get("lora_r", 0) == raw.get("lora_r", 8 if "stage" in raw else 0)
    assert resolved.rank_needs_use_peft is None


def test_kto_train_refuses_the_file_before_writing_anything(tmp_path, tiny_model_dir, tiny_cache):
    from kto.train.cli import main

    out = tmp_path / "run"
    config = tmp_path / "a.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_dir}\ncache: {tiny_cache}\noutput_dir: {out}\nmax_steps: 1\nlearning_rate: 1.0e-6\nlora_r: 16\n"
        "lora_alpha: 32\nlora_target_modules: [q_proj, v_proj]\n"
    )
    result = CliRunner().invoke(main, ["--config", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kto-train: error: --config {config}: lora_r: 16 without use_peft: in TRL's names")
    assert not out.exists()


def write_trl_file(path, model, cache, out, rank="16", targets="[q_proj, v_proj]", **extra: str):
    path.write_text(
        f"model_name_or_path: {model}\ncache: {cache}\noutput_dir: {out}\nmax_steps: 1\nlearning_rate: 1.0e-6\nlora_r: {rank}\n"
        "lora_alpha: 32\nper_device_train_batch_size: 4\n"
        + (f"lora_target_modules: {targets}\n" if targets else "")
        + "".join(f"{k}: {v}\n" for k, v in extra.items())
    )
    return path


def one_line_error_of(result) -> str:
    """The refusal, the last line (the file's notes come before it), exit 2, nothing trained."""
    assert result.exit_code == 2, result.output
    return result.output.strip().splitlines()[-1]


def invoke(*args: str):
    from accelerate.state import AcceleratorState

    from kto.train.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("flag, targets, rank", [("4", "[q_proj, v_proj]", 4), ("0", None, 0)])
def test_lora_r_on_the_command_line_settles_the_rank(tmp_path, tiny_model_dir, tiny_cache, flag, targets, rank):
    """Command-line flags win (README): --lora-r says which the user means, LoRA of that rank or
    (0) every weight, so the file's ambiguity is no longer refused."""
    import json

    out = tmp_path / "run"
    config = write_trl_file(tmp_path / "a.yaml", tiny_model_dir, tiny_cache, out, targets=targets)
    result = invoke("--config", str(config), "--lora-r", flag)
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "kto_run.json").read_text())["config"]
    assert (recorded["lora_r"], recorded["lora_alpha"], recorded["lora_target_modules"]) == (rank, 32.0 if rank else 16.0, "q_proj,v_proj" if rank else None)


def test_lora_r_0_over_the_files_targets_is_refused_as_use_peft_false_is(tmp_path, tiny_model_dir, tiny_cache):
    """Every weight trained, the file's LoRA targets ask for what does not happen: the rank
    check's own refusal, as under use_peft: false, not the use_peft one."""
    config = write_trl_file(tmp_path / "a.yaml", tiny_model_dir, tiny_cache, tmp_path / "run")
    line = one_line_error_of(invoke("--config", str(config), "--lora-r", "0"))
    assert line == f"kto-train: error: --config {config}: lora_target_modules [q_proj, v_proj]: needs --lora-r R > 0"


def test_eval_only_reads_no_rank_so_the_file_is_not_refused(tmp_path, tiny_model_dir, tiny_cache, tiny_eval_cache):
    """Under --eval-only the file's training keys are left unused (README), lora_r among them."""
    import json

    config = write_trl_file(tmp_path / "a.yaml", tiny_model_dir, tiny_cache, tmp_path / "ev", eval_cache=str(tiny_eval_cache))
    result = invoke("--config", str(config), "--eval-only")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["model"] == str(tiny_model_dir)
    assert "without use_peft" not in result.output


@pytest.mark.parametrize(
    "rank, said",
    [
        ("-4", "lora_r -4: must not be negative (0 trains every weight)"),
        (".nan", "lora-r: nan is not a whole number"),
        ("1e-09", "lora-r: '1e-09' is not a valid integer."),
        ("2.5", "lora-r: 2.5 is not a whole number"),
    ],
)
def test_an_invalid_rank_is_refused_as_a_rank_first(tmp_path, tiny_model_dir, tiny_cache, rank, said):
    """Only a valid rank (a whole number ≥ 1) is ambiguous: asking for use_peft over an invalid
    one led to a second refusal once the user wrote it."""
    config = write_trl_file(tmp_path / "a.yaml", tiny_model_dir, tiny_cache, tmp_path / "run", rank=rank)
    assert one_line_error_of(invoke("--config", str(config))) == f"kto-train: error: --config {config}: {said}"


def test_a_null_adapter_key_leaves_a_trl_file_trls():
    """`adapter_name_or_path: null` asks for nothing: the file stays TRL's (its defaults, its
    lora_r refusal), as without the key; LLaMA-Factory's other keys count as written."""
    from kto.formats.config_switches import is_llama_factory

    with_null = resolve({**TRL_LORA, "adapter_name_or_path": None}, TRAIN)
    assert with_null.rank_needs_use_peft == RANK_WITHOUT_USE_PEFT
    plain = {"model_name_or_path": "m", "max_steps": 1}
    assert resolve({**plain, "adapter_name_or_path": None}, TRAIN).values == resolve(plain, TRAIN).values
    assert "lr" not in resolve({**plain, "adapter_name_or_path": None}, TRAIN).values  # not LLaMA-Factory's 5e-5
    assert not is_llama_factory({"adapter_name_or_path": None})
    assert is_llama_factory({"adapter_name_or_path": "saves/x"}) and is_llama_factory({"finetuning_type": None})
