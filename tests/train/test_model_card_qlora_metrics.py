"""The model card of a QLoRA run says that its final metrics were measured with the quantized
base, and how to measure the saved weights. Seen by a hunter: the cards of final/ and
final-merged/ showed eval loss 0.500594 (NF4 base), while final-merged/'s weights, merged into the
unquantized base, score otherwise; nothing on the card said so."""

from kto.train.model_card import METRIC_ORDER, metrics_section, model_card

CONFIG = {
    "model": "q128",
    "loss": "kto",
    "beta": 0.1,
    "desirable_weight": 1.0,
    "undesirable_weight": 1.0,
    "sft_weight": 0.0,
    "lr": 1e-2,
    "lr_schedule": "linear",
    "warmup_ratio": 0.1,
    "warmup_steps": 0,
    "batch_size": 4,
    "grad_accum": 1,
    "seed": 0,
    "eval_cache": "cacheQ/eval",
    "merge_adapters": True,
}
DERIVED = {"total_steps": 3, "world_size": 1, "cache_fingerprint": "f" * 64, "eval_cache_fingerprint": "e" * 64}
EVAL = {name: 0.5 for name in METRIC_ORDER}


def section(text: str) -> list[str]:
    """The metrics heading and the line after it (the blank line between them skipped)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("## Final metrics"))
    return [lines[at], lines[at + 2]]


def test_the_merged_card_says_its_metrics_are_the_4bit_bases_and_how_to_measure_its_weights():
    record = {"config": {**CONFIG, "load_in_4bit": True}, "derived": DERIVED}
    heading, first = section(model_card(record, [], EVAL, EVAL, "merged", False, 0, merged=True))
    assert heading == "## Final metrics (measured during training on the 4-bit NF4 base, not on the weights saved here)"
    assert first == (
        "Measured while training, with the base weights held in 4-bit NF4 (bitsandbytes); this folder holds the adapters merged into "
        "the unquantized base, which scores otherwise: `kto-train --eval-only --model <this folder> --eval-cache cacheQ/eval` measures it."
    )


def test_the_adapter_card_names_the_merged_folder_or_the_setting_that_unquantizes():
    record = {"config": {**CONFIG, "load_in_8bit": True}, "derived": DERIVED}
    heading, first = section(model_card(record, [], EVAL, EVAL, "LoRA adapters", True, 0))
    assert heading == "## Final metrics (measured during training on the 8-bit base, not on the weights saved here)"
    assert first.startswith(
        "Measured while training, with the base weights held in 8-bit (bitsandbytes LLM.int8), as "
        "`kto-train --eval-only --model <this folder> --eval-cache cacheQ/eval` measures them again; "
        "these adapters on the unquantized base (as peft loads this folder) score otherwise: "
        "`kto-train --eval-only --model <this folder>/../final-merged --eval-cache cacheQ/eval` measures them merged into it"
    ), first
    unmerged = metrics_section({**CONFIG, "load_in_4bit": True, "merge_adapters": False, "eval_cache": None}, merged=False)
    assert unmerged[2].endswith(
        "`kto-train --eval-only --model <this folder> --eval-cache EVAL_CACHE --config F`, F a YAML file holding `load_in_4bit: false`, measures them."
    )


def test_an_unquantized_run_keeps_the_plain_heading():
    assert metrics_section({**CONFIG, "load_in_4bit": False}, merged=False) == ["## Final metrics", ""]


def test_eval_only_takes_the_runs_quantization_for_its_adapters_not_for_its_merged_model(tmp_path):
    """The card's command for final-merged/ measures the saved weights: the run's --load-in-4bit
    quantized the merged model itself (the hunter's 0.50012, neither the card's number nor the
    weights'); the adapters of final/ still load on the base quantized as in training."""
    from kto.train.config import TrainConfig
    from kto.train.eval_only import RunOf, with_run_settings

    run = RunOf(tmp_path, {"config": {"load_in_4bit": True, "beta": 0.2}})
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "adapter_config.json").write_text("{}")
    (tmp_path / "final-merged").mkdir()
    (tmp_path / "final-merged" / "config.json").write_text("{}")
    merged = with_run_settings(TrainConfig(model=str(tmp_path / "final-merged"), eval_only=True, eval_cache=tmp_path), run, set())
    adapters = with_run_settings(TrainConfig(model=str(tmp_path / "final"), eval_only=True, eval_cache=tmp_path), run, set())
    assert (merged.load_in_4bit, merged.beta) == (False, 0.2)
    assert (adapters.load_in_4bit, adapters.beta) == (True, 0.2)
