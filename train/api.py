"""kto-train as a Python call: `kto.train.run(TrainConfig(...))`, and
`kto.train.evaluate_model(TrainConfig(..., eval_only=True))` for `kto-train --eval-only`.

The CLI (cli.py) parses flags and --config into the same `TrainConfig` and calls `run`, so a
notebook, a pipeline or a script under `accelerate launch`/`torchrun` trains exactly as the
command does. Bad input raises `kto.formats.errors.InputError` (a ValueError) whose message is
the CLI's one line; only the CLI turns it into exit status 2. Nothing here calls sys.exit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from kto.formats.errors import InputError

from .config import TrainConfig
from .metrics import last_metrics, metric_values


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

    Raises InputError on bad input, before anything is written to `config.out`;
    kto.train.stop.Interrupted where a signal stopped the run with a checkpoint (its subclass
    PushInterrupted: stopped the upload of a finished final/ with config.push_to_hub), and
    kto.train.stop.Aborted (a KeyboardInterrupt) where a second Ctrl-C aborted it; an error that
    a Ctrl-C then came upon is raised itself, the interrupt noted (stop.raise_in_place). final/ (and
    final-merged/) hold their README.md model card from the moment they appear (train/model_card.py)."""
    from kto.formats.runrecord import MERGED_DIR

    from .loop import train  # torch, accelerate and the model load on call, not on import
    from .stop import raise_in_place

    if config.eval_only:
        raise InputError("eval_only=True trains nothing: call kto.train.evaluate_model(config), which returns the eval line")
    # Offline mode and a token: before the cache is fetched (the repo: once the inputs and a
    # --resume passed, setup.py check_inputs).
    check_push(config)
    config = with_hub_caches(config)
    # The exception the caller is handling, if any (run called in its `except KeyboardInterrupt:`):
    # the run's own exceptions chain onto it, and it is no interrupt of the run.
    entry = sys.exc_info()[1]
    try:
        trained = train(config)
    except BaseException as exc:
        # A second Ctrl-C (and any error its cleanup raised): Aborted, what it left and how to go
        # on. An error that a Ctrl-C came upon: that error, the interrupt noted.
        raise_in_place(config, exc, entry)
        raise
    train_line, eval_line = last_metrics(config.out)
    result = TrainResult(
        run_dir=Path(config.out),
        final=Path(trained.final),
        steps=train_line.get("step", 0) if train_line else _total_steps(config.out),
        metrics=metric_values(train_line),
        eval_metrics=metric_values(eval_line) if eval_line else None,
        merged=Path(config.out) / MERGED_DIR if config.merge_adapters else None,
    )
    # The main process uploads; the others return without waiting for it (under the CLI the
    # group is ended when the run returns).
    if config.push_to_hub and trained.main_process:  # train() checked every weight finite before saving final/
        push_final(config, result, trained.processes)
    return result


def push_final(config: TrainConfig, result: TrainResult, processes: int) -> None:
    """Upload the finished run's final/ to config.push_to_hub. A stop signal meanwhile raises
    kto.train.stop.PushInterrupted, having said that final/ is complete and how to push it."""
    from kto.formats.errors import log
    from kto.formats.hub import push_folder

    from .stop import stoppable_push

    retry = "final/ is complete: push it with the same command and --resume"  # a finished run resumed trains nothing, then pushes
    with stoppable_push(config, result.final, processes):
        url = push_folder(result.final, config.push_to_hub, dataset=False, private=config.hub_private, message=f"kto-train: {result.steps} steps", retry=retry)
    log(f"pushed {result.final} to {config.push_to_hub} ({url})")


def check_push(config: TrainConfig) -> None:
    """With --push-to-hub: offline mode and no token are refused before anything else
    (formats/hub.py check_push), on the main process, every rank stopping with its line
    (on_main). The repo is created, or checked writable, at the end of the input checks
    (setup.py check_inputs), so that a refused input leaves no empty repo on the Hub. The state
    made for it is given back, so the run sets accelerate up afresh; a group it started stays for
    the run (train/processes.py)."""
    if not config.push_to_hub:
        return
    import torch
    from accelerate import PartialState

    from kto.formats.errors import on_main
    from kto.formats.hub import check_push as check_hub_push

    from .processes import borrowed_accelerate_state

    with borrowed_accelerate_state():  # cpu=True: accelerate starts a gloo group for several CPU processes only then
        state = PartialState(cpu=not torch.cuda.is_available())
        on_main(lambda: check_hub_push(config.push_to_hub), state)


def with_hub_caches(config: TrainConfig) -> TrainConfig:
    """`--cache hf:ORG/NAME` (and `--eval-cache hf:ORG/NAME/eval`): the dataset repo pulled into
    the local HF cache, then read as any cache directory (manifest, sha256 of every shard)."""
    from dataclasses import replace

    from kto.formats.hub import fetch_cache, is_hub_cache

    if config.cache is not None and is_hub_cache(config.cache):
        config = replace(config, cache=fetch_cache(config.cache))
    if config.eval_cache is not None and is_hub_cache(config.eval_cache):
        config = replace(config, eval_cache=fetch_cache(config.eval_cache, "--eval-cache"))
    return config


def _total_steps(run_dir: Path) -> int:
    from kto.formats.runrecord import read_run_config

    record = read_run_config(run_dir)
    return int(record["derived"]["total_steps"]) if record else 0


def evaluate_model(config: TrainConfig, explicit: set[str] | None = None, print_json: bool = False) -> dict:
    """`kto-train --eval-only`: evaluate config.model on config.eval_cache as a run's evaluations
    do, and return the eval line (the keys of a metrics.jsonl eval line, and `model`). A loss
    setting left at its default is the run's where config.model is a run's final/ or
    checkpoint-STEP/; with config.out, OUT/eval_results.json is written too. `explicit`: the
    settings given (the CLI's: on its command line or in --config); None: those off their defaults.
    print_json: also print the line as JSON on stdout (the CLI's output)."""
    from .eval_only import evaluate_policy

    if not config.eval_only:
        raise InputError("evaluate_model: needs eval_only=True (kto.train.run trains)")
    return evaluate_policy(with_hub_caches(config), explicit, print_json)
