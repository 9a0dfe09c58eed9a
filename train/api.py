"""kto-train as a Python call: `kto.train.run(TrainConfig(...))`.

The CLI (cli.py) parses flags and --config into the same `TrainConfig` and calls `run`, so a
notebook, a pipeline or a script under `accelerate launch`/`torchrun` trains exactly as the
command does. Bad input raises `kto.formats.errors.InputError` (a ValueError) whose message is
the CLI's one line; only the CLI turns it into exit status 2. Nothing here calls sys.exit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig

METRICS_NAME = "metrics.jsonl"


@dataclass(frozen=True)
class TrainResult:
    """What a finished kto-train wrote (every process of a multi-process run gets it)."""

    run_dir: Path
    """--out: kto_run.json, metrics.jsonl, checkpoint-STEP/, final/."""
    final: Path
    """The trained policy: an HF model directory, or a PEFT adapter directory with LoRA."""
    steps: int
    """Optimizer steps of the whole run (a resumed run counts the steps before it too)."""
    metrics: dict = field(default_factory=dict)
    """The last training line of metrics.jsonl (loss, kl, rewards/*, …), without step and split;
    empty with --log-every 0."""
    eval_metrics: dict | None = None
    """The last eval line of metrics.jsonl (the evaluation after the last step), or None."""
    merged: Path | None = None
    """final-merged/ with --merge-adapters, else None."""


def run(config: TrainConfig) -> TrainResult:
    """Train the policy from `config.cache`; return where it went and its final metrics.

    Raises InputError on bad input, before anything is written to `config.out`."""
    from .adapters import MERGED_DIR
    from .loop import train  # torch, accelerate and the model load on call, not on import

    config = with_hub_caches(config)
    final = train(config)
    train_line, eval_line = last_metrics(config.out)
    result = TrainResult(
        run_dir=Path(config.out),
        final=Path(final),
        steps=train_line.get("step", 0) if train_line else _total_steps(config.out),
        metrics=_values(train_line),
        eval_metrics=_values(eval_line) if eval_line else None,
        merged=Path(config.out) / MERGED_DIR if config.merge_adapters else None,
    )
    if _is_main_process():
        write_cards(config, result)
        if config.push_to_hub:  # train() checked every weight finite before saving final/
            from kto.formats.errors import log
            from kto.formats.hub import push_folder

            url = push_folder(result.final, config.push_to_hub, dataset=False, private=config.hub_private, message=f"kto-train: {result.steps} steps")
            log(f"pushed {result.final} to {config.push_to_hub} ({url})")
    return result


def with_hub_caches(config: TrainConfig) -> TrainConfig:
    """`--cache hf:ORG/NAME` (and `--eval-cache hf:ORG/NAME/eval`): the dataset repo pulled into
    the local HF cache, then read as any cache directory (manifest, sha256 of every shard)."""
    from dataclasses import replace

    from kto.formats.hub import fetch_cache, is_hub_cache

    if is_hub_cache(config.cache):
        config = replace(config, cache=fetch_cache(config.cache))
    if config.eval_cache is not None and is_hub_cache(config.eval_cache):
        config = replace(config, eval_cache=fetch_cache(config.eval_cache, "--eval-cache"))
    return config


def _is_main_process() -> bool:
    # train() ended with accelerator.end_training(), which destroys the process group: no
    # collective is possible any more, so the other ranks return without waiting for the card.
    from accelerate import PartialState

    return PartialState().is_main_process


def write_cards(config: TrainConfig, result: TrainResult) -> None:
    """README.md model cards in final/ (and final-merged/), from the run's own records."""
    from kto.formats.cache import open_cache
    from kto.formats.compute.adapters import is_adapter_dir
    from kto.formats.runrecord import read_run_config

    from .model_card import model_card, write_model_card

    record = read_run_config(config.out)
    inputs = open_cache(config.cache, stamps=False).manifest.content.inputs
    adapter = is_adapter_dir(result.final)
    kind = f"LoRA adapters (r {config.lora_r}, alpha {config.lora_alpha:g})" if adapter else "every weight (full fine-tune)"
    write_model_card(result.final, model_card(record, inputs, result.metrics, result.eval_metrics, kind, adapter))
    if result.merged:
        merged_kind = "the base model with the LoRA adapters merged in (an ordinary model)"
        write_model_card(result.merged, model_card(record, inputs, result.metrics, result.eval_metrics, merged_kind, False))


def last_metrics(run_dir: Path) -> tuple[dict | None, dict | None]:
    """The last `train` and the last `eval` record of RUN/metrics.jsonl (None where there is none).

    The main process closes the file before every rank leaves `train`, so any rank may read it."""
    path = Path(run_dir) / METRICS_NAME
    last: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            last[record.get("split", "train")] = record
    return last.get("train"), last.get("eval")


def _values(record: dict | None) -> dict:
    return {k: v for k, v in (record or {}).items() if k not in ("step", "split")}


def _total_steps(run_dir: Path) -> int:
    from kto.formats.runrecord import read_run_config

    record = read_run_config(run_dir)
    return int(record["derived"]["total_steps"]) if record else 0
