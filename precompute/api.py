"""kto-precompute as a Python call: `kto.precompute.run(PrecomputeConfig(...))`.

The CLI (cli.py) parses flags into the same `PrecomputeConfig` and calls `run`; so a notebook,
a pipeline or a script under `accelerate launch` gets exactly what the command does. Bad input
raises `kto.formats.errors.InputError` (a ValueError) whose message is the CLI's one line; the
CLI alone turns it into exit status 2. Nothing here calls sys.exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kto.formats.compute.early_checks import check_local_model
from kto.formats.manifest import Counts, Manifest
from kto.formats.schema import EVAL_DIR
from kto.precompute.inputs.records import check_distinct_files, check_input_path

from .config import PrecomputeConfig
from .templates import load_chat_template


@dataclass(frozen=True)
class PrecomputeResult:
    """What a finished kto-precompute wrote (every process of a multi-process run gets it)."""

    cache: Path
    """The training cache directory (its manifest.json is final)."""
    fingerprint: str
    """The cache's fingerprint, as in its manifest: what kto-train checks."""
    counts: Counts
    """Rows per class, dropped, truncated, tokens scored: the manifest's counts."""
    eval_cache: Path | None = None
    """OUT/eval/ when --eval-fraction > 0, else None."""
    eval_fingerprint: str | None = None
    eval_counts: Counts | None = None


def run(config: PrecomputeConfig) -> PrecomputeResult:
    """Score every example of `config.data` and its KL pair with the reference; write the cache.

    Raises InputError on bad input (nothing half-written); reruns resume as the CLI does."""
    check_paths(config)  # seconds sooner than after the imports below, with the same messages
    if config.push_to_hub:
        check_push(config)  # offline mode, a token: before a row is read (the repo: once the rows passed, pipeline.py)
    from .pipeline import run_precompute  # torch and the models load on call, not on import

    try:
        outcome = run_precompute(config)
    except KeyboardInterrupt as exc:  # the API leaves SIGINT to its host: a notebook's interrupt, a Ctrl-C
        exc.add_note(f"kto.precompute.run was interrupted: the same call goes on with {config.out}, from the shards it finished (kept) if any")
        raise
    result = result_of(config, outcome)
    if config.push_to_hub:
        push(config, result)
    return result


def check_paths(config: PrecomputeConfig) -> None:
    """The checks of --model, --chat-template and every --data path that need neither torch nor
    transformers, in the order the run makes them (pipeline._run: model, template, inputs), so
    a typo or a FIFO is refused before those imports. Reads no row and writes nothing."""
    check_local_model(config.model)
    load_chat_template(config.chat_template, config.chat_template_kwargs)
    flags = ["--data"] * len(config.data) + ["--eval-data"] * len(config.eval_data)
    for path, flag in zip((*config.data, *config.eval_data), flags):
        check_input_path(path, flag)
    check_distinct_files((*config.data, *config.eval_data), flags)  # a link to another input would read every row twice


def check_push(config: PrecomputeConfig) -> None:
    """--push-to-hub's offline mode and token, checked on the main process before any work
    (formats/hub.py check_push); every process stops with the line where it fails (on_main).
    The repo is created, or checked writable, once the rows were read and checked, before the
    model loads (pipeline.py _stage_and_split): a refused row leaves no empty repo on the Hub."""
    import torch
    from accelerate import PartialState

    from kto.formats.errors import on_main
    from kto.formats.hub import check_push as check_hub_push

    state = PartialState(cpu=not torch.cuda.is_available())  # the one run_precompute uses (a singleton)
    on_main(lambda: check_hub_push(config.push_to_hub), state)


def push(config: PrecomputeConfig, result: PrecomputeResult) -> None:
    """The main process uploads the finished cache as a dataset repo (hidden bookkeeping left
    out); `kto-train --cache hf:ORG/NAME` reads it back. The others wait for the upload."""
    from accelerate import PartialState

    from kto.formats.errors import log, on_main
    from kto.formats.hub import push_folder

    def upload() -> None:
        retry = "the cache is complete: run the same command again to push it"  # a rerun scores nothing, then pushes
        message = f"kto-precompute cache {result.fingerprint}"
        url = push_folder(result.cache, config.push_to_hub, dataset=True, private=config.hub_private, message=message, retry=retry)
        log(f"pushed {result.cache} to dataset {config.push_to_hub} ({url})")

    on_main(upload, PartialState())  # a failed upload stops every process with the same line


def result_of(config: PrecomputeConfig, manifests: list[Manifest]) -> PrecomputeResult:
    """The result for the manifests run_precompute returns (train first, then eval if any)."""
    by_split = {m.content.split: m for m in manifests}
    train, evaluation = by_split["train"], by_split.get("eval")
    return PrecomputeResult(
        cache=Path(config.out),
        fingerprint=train.fingerprint,
        counts=train.counts,
        eval_cache=Path(config.out) / EVAL_DIR if evaluation else None,
        eval_fingerprint=evaluation.fingerprint if evaluation else None,
        eval_counts=evaluation.counts if evaluation else None,
    )
