"""A range or consistency error about a value a --config file set names the file and the key as
the file spells it (`pref_beta`, not `--beta`); the same error about a command-line flag names
the flag, as before. TrainConfig's checks name flags (the Python API shares them): the CLI maps
the leading flag back to the file's key (formats/config_file.py, file_key_error)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import train_error_line

import kto.train.api
import kto.train.cli
from kto.train.cli import main


@pytest.fixture
def no_paths(monkeypatch):
    """ "c" and "m" are placeholders: the refusals tested here come before any path is read."""
    monkeypatch.setattr(kto.train.cli, "check_paths", lambda cfg: None)


def refusal(tmp_path, text: str, *extra: str) -> tuple[str, str]:
    """kto-train's one error line for `text` as its --config file, and the file's path."""
    path = tmp_path / "f.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2, result.output
    return train_error_line(result.output), str(path)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("pref_beta: 0\n", "pref_beta 0 (kto-train's --beta): must be positive"),
        ("pref_ftx: -0.5\n", "pref_ftx -0.5 (kto-train's --sft-weight): must not be negative"),
        ("warmup_ratio: 1.5\n", "warmup_ratio 1.5: must be in [0, 1)"),  # our own name: no "(kto-train's ...)"
        ("learning_rate: -1.0e-5\n", "learning_rate -1e-05 (kto-train's --lr): must be positive"),
        ("beta: -1\n", "beta -1: must be positive"),
        (
            "lr_scheduler_type: bogus\n",
            "lr_scheduler_type bogus (kto-train's --lr-schedule): choose one of linear, cosine, cosine_with_restarts, polynomial, constant, "
            "constant_with_warmup, inverse_sqrt, cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay",
        ),
        (
            # Right to refuse (LLaMA-Factory: "Quantization is only compatible with the LoRA method"), but by the file's keys.
            "stage: kto\nfinetuning_type: full\nquantization_bit: 4\n",
            "quantization_bit 4 (kto-train's --load-in-4bit): needs adapters (--lora-r R > 0); quantized weights cannot be trained "
            "directly; --lora-r comes from the file's finetuning_type: full",
        ),
    ],
)
def test_a_value_from_the_file_is_named_by_its_key(tmp_path, no_paths, text, said):
    line, path = refusal(tmp_path, text)
    assert line == f"kto-train: error: --config {path}: {said}"


def test_a_flag_on_the_command_line_is_named_as_the_flag(tmp_path, no_paths):
    """The flag wins over the file, so the error is about the flag: never labelled pref_beta."""
    line, _ = refusal(tmp_path, "pref_beta: 0.5\n", "--beta", "0")
    assert line == "kto-train: error: --beta 0.0: must be positive"
    line, _ = refusal(tmp_path, "pref_beta: 0\n", "--beta", "-2")
    assert line == "kto-train: error: --beta -2.0: must be positive"


def test_a_default_the_file_did_not_write_is_named_as_the_flag(tmp_path, no_paths):
    """--lr 0 on the command line with a LLaMA-Factory file (whose learning_rate default applies
    otherwise) is the flag's error; `epochs` from their defaults is never a key the file wrote."""
    line, _ = refusal(tmp_path, "stage: kto\nfinetuning_type: full\n", "--lr", "0")
    assert line == "kto-train: error: --lr 0.0: must be positive"


@pytest.mark.parametrize(
    ("text", "asked"),
    [
        ("stage: kto\nlora_rank: 0\n", "finetuning_type lora (LLaMA-Factory's default)"),
        ("finetuning_type: lora\nlora_rank: 0\n", "finetuning_type: lora"),
        ("finetuning_type: lora\nlora_rank: 0\nlora_alpha: 16\n", "finetuning_type: lora"),  # trained every weight, silently
        ("use_peft: true\nlora_r: 0\n", "use_peft: true"),
    ],
)
def test_a_lora_rank_of_0_where_the_file_asks_for_lora_is_refused_by_its_key(tmp_path, no_paths, text, asked):
    """`lora_rank: 0` gave lora_alpha 2 × 0 and `--lora-alpha 0.0: must be positive`, a key the
    file never wrote; with lora_alpha written it trained every weight under `finetuning_type: lora`."""
    line, path = refusal(tmp_path, text)
    key = "lora_r" if "lora_r:" in text else "lora_rank"
    assert line == (
        f"kto-train: error: --config {path}: {key} 0 (kto-train's --lora-r): {asked} needs a LoRA rank of at least 1 (peft refuses 0 "
        "too); to train every weight, write finetuning_type: full (TRL: use_peft: false)"
    )


def test_the_command_line_rank_wins_over_the_file_but_not_into_full_training(tmp_path, monkeypatch):
    """--lora-r 4 over `lora_rank: 0` trains LoRA with alpha 2 × 4; --lora-r 0 over
    `finetuning_type: lora` would train every weight while the file (and its note) say LoRA:
    refused, saying how to train every weight."""
    seen = []
    monkeypatch.setattr(kto.train.api, "run", seen.append)
    monkeypatch.setattr(kto.train.cli, "check_paths", lambda cfg: None)
    path = tmp_path / "f.yaml"
    path.write_text("finetuning_type: lora\nlora_rank: 0\n")
    base = ["--config", str(path), "--cache", "c", "--model", "m", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, [*base, "--lora-r", "4"])
    assert result.exit_code == 0, result.output
    assert [(cfg.lora_r, cfg.lora_alpha) for cfg in seen] == [(4, 8.0)]
    result = CliRunner().invoke(main, [*base, "--lora-r", "0"])
    assert result.exit_code == 2 and seen == [seen[0]]
    assert result.output.strip().splitlines()[-1] == (
        f"kto-train: error: --lora-r 0 over --config {path}'s finetuning_type: lora: that would train every weight, not LoRA; "
        "give --lora-r R of at least 1, or write finetuning_type: full (TRL: use_peft: false) in the file to train every weight"
    )


@pytest.mark.parametrize("given", ["file", "command line"])
def test_a_refusal_the_run_makes_names_the_files_key(tmp_path, tiny_cache, tiny_model_dir, given):
    """The LoRA targets are checked against the model when the run starts, not with the config:
    a target the file listed is still named by the file's key, as the file writes it; the same
    targets from the command line are named as the flag."""
    path = tmp_path / "f.yaml"
    flags = ["--lora-target-modules", "q_proj,nonexistent_proj"] if given == "command line" else []
    path.write_text("finetuning_type: lora\n" + ("lora_target: [q_proj, nonexistent_proj]\n" if given == "file" else ""))
    args = ["--config", str(path), "--cache", str(tiny_cache), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *flags]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    reason = (
        f"--model {tiny_model_dir} has no linear layer named nonexistent_proj (its decoder has: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)"
    )
    if given == "file":
        assert (
            train_error_line(result.output)
            == f"kto-train: error: --config {path}: lora_target [q_proj, nonexistent_proj] (kto-train's --lora-target-modules): {reason}"
        )
    else:
        assert train_error_line(result.output) == f"kto-train: error: --lora-target-modules q_proj,nonexistent_proj: {reason}"
    assert not (tmp_path / "o").exists()
