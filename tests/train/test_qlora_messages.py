"""What a QLoRA run says about its quantized base: the step-0 refusal under --drift-tolerance names
the quantization (not the attention kernel), and the model cards of final/ and final-merged/ say
that the base weights were quantized while training."""

import importlib.util

import pytest
from conftest import run_train, train_error_line

ARGS = ["--batch-size", "2", "--lr", "1e-2", "--lora-r", "4", "--lora-alpha", "8", "--max-steps", "2"]


@pytest.fixture(autouse=True, scope="module")
def _needs_4bit():
    """The runs here quantize the tiny model's base to NF4: peft and a bitsandbytes with a CPU
    backend (0.46 on) are needed; without them the run would be refused before these messages."""
    pytest.importorskip("peft")
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes not installed")
    from kto.train.adapters import bitsandbytes_backend

    why = bitsandbytes_backend("cpu", 4)
    if why:
        pytest.skip(why)


def card_row(text: str, name: str) -> str:
    """The value cell of the model card's table row `name`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return cells[1]
    raise AssertionError(f"no row {name!r} in\n{text}")


def test_a_drift_tolerance_refusal_with_a_4bit_base_names_the_quantization(tiny_cache, tiny_model_dir, tmp_path):
    """Seen by a hunter: the refusal blamed the attention implementation or library versions, while
    the drift is NF4's rounding of the base against the unquantized reference the cache holds."""
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "q", *ARGS, "--load-in-4bit", "--drift-tolerance", "0.001")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert "step-0 log-probs differ from the cache by up to" in line and "(tolerance 0.001)" in line, line
    assert "4-bit NF4" in line and "unquantized" in line, line
    assert "attention implementation" not in line and "Match them" not in line, line


def test_the_model_cards_of_a_qlora_run_say_the_base_was_quantized(tiny_cache, tiny_model_dir, tmp_path):
    """Seen by a hunter: neither card said so, though the final metrics on them were measured with
    the 4-bit base; final/'s adapters load on the unquantized base, final-merged/ is merged into it."""
    out = tmp_path / "q"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--load-in-4bit", "--merge-adapters")
    assert result.exit_code == 0, result.output
    final = card_row((out / "final" / "README.md").read_text(), "base weights during training")
    merged = card_row((out / "final-merged" / "README.md").read_text(), "base weights during training")
    assert final.startswith("4-bit NF4 (bitsandbytes)") and "the adapters load on the unquantized base" in final, final
    assert merged.startswith("4-bit NF4 (bitsandbytes)") and "merged into the unquantized base" in merged, merged


def test_the_quantization_row_of_the_settings_table():
    """8-bit says so as well; an unquantized run has no such row (nothing to warn about)."""
    from kto.train.model_card import quantization_line

    assert quantization_line({"load_in_4bit": False, "load_in_8bit": True}, merged=False) == (
        "8-bit (bitsandbytes LLM.int8); the adapters load on the unquantized base"
    )
    assert quantization_line({"load_in_4bit": True}, merged=True) == "4-bit NF4 (bitsandbytes); the adapters are merged into the unquantized base"
    assert quantization_line({"load_in_4bit": False, "load_in_8bit": False}, merged=False) is None
    assert quantization_line({}, merged=False) is None  # a record made before the flags existed
