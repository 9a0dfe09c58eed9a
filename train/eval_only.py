"""kto-train --eval-only: the eval line of a model after a run, with no training.

--model (anything `kto-inspect score --model` takes: formats/compute/policy_dirs.py) is
evaluated on --eval-cache by `evaluate`, under `evaluation_mode`, the very function and mode the
run's own evaluations use, so a run's checkpoint-STEP/ gives the run's eval line at STEP. No
optimizer, no run directory, no checkpoint, no reference model. The loss settings (β, the class
weights, --loss, --sft-weight) and numerics (--dtype, --mixed-precision) are the run's where
--model lies in a kto-train run, unless given. The line is printed (a human line on stderr, the JSON on stdout) and, with --out DIR, written to
DIR/eval_results.json (the file transformers' Trainer and LLaMA-Factory write), once, by the main
process of a launch.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kto.formats.errors import InputError, log

from .config import DEFAULTS, TrainConfig, training_only

if TYPE_CHECKING:
    from accelerate import Accelerator

EVAL_RESULTS = "eval_results.json"
# Taken from the run where --model is a run's and the setting was not given: the loss, and the
# numerics (a bf16 run's evals ran in bf16; evaluated in fp32 its checkpoint gives other numbers).
RUN_SETTINGS = {
    "beta": "β",
    "desirable_weight": "desirable weight",
    "undesirable_weight": "undesirable weight",
    "loss": "loss",
    "sft_weight": "sft weight",
    "dtype": "dtype",
    "mixed_precision": "mixed precision",
}


def evaluate_model(cfg: TrainConfig, explicit: set[str] | None = None) -> dict:
    """Evaluate cfg.model on cfg.eval_cache (cfg.eval_only; `hf:` caches already fetched, see
    api.evaluate_model); return the eval line: the keys of a
    metrics.jsonl eval line (loss, kl, rewards/*, ..., eval_cache) and `model`.

    `explicit`: the settings given (the CLI: on the command line or in --config); None: those
    that differ from their defaults (the Python API). A loss setting not given is the run's."""
    from .processes import borrowed_accelerate_state, borrowed_rng_state

    if not cfg.eval_only:
        raise InputError("evaluate_model: needs eval_only=True")
    explicit = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != DEFAULTS[f.name]} if explicit is None else explicit
    target = results_path(cfg.out)  # before anything loads
    cfg, said = with_run_settings(cfg, explicit)
    with borrowed_accelerate_state(), borrowed_rng_state():
        accelerator = eval_accelerator(cfg)
        unused = training_only(explicit)
        if unused:
            log(f"note: --eval-only: {', '.join(unused)} train; not used here", accelerator)
        log(said, accelerator)
        line = {**evaluated(cfg, accelerator), "model": str(cfg.model)}
        if accelerator.is_main_process:
            report(cfg, line, target)
        accelerator.wait_for_everyone()
    return line


def results_path(out: Path | None) -> Path | None:
    """OUT/eval_results.json, or None without --out; refused (one line) where OUT is a file, a
    kto-precompute cache or a kto-train run directory (they hold only their own files), or in one."""
    from kto.formats.atomic import NotWritableError, check_can_create
    from kto.formats.cache import cache_holding
    from kto.formats.runrecord import run_holding

    if out is None:
        return None
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: not a directory (--eval-only writes OUT/{EVAL_RESULTS})")
    target = out / EVAL_RESULTS
    holder = cache_holding(target)
    if holder is not None:
        raise InputError(f"--out {out}: inside the cache directory {holder}; write it elsewhere (a cache holds only kto files)")
    run = run_holding(target)
    if run is not None:
        raise InputError(f"--out {out}: inside the kto-train run {run}, which holds only its own files (its --resume refuses others); write it elsewhere")
    if out.is_dir():
        try:
            check_can_create(target)  # a read-only folder: refused now, not after the evaluation
        except NotWritableError as exc:
            raise InputError(f"--out {exc}") from None
    return target


def with_run_settings(cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, str]:
    """cfg with the run's loss settings and numerics (RUN/kto_run.json) where --model is a run's final/,
    final-merged/ or checkpoint-STEP/ and the setting was not given; and the line saying which
    settings are used and where they come from."""
    from kto.formats.runrecord import read_run_config, record_path, run_of_model_dir

    run = run_of_model_dir(cfg.model)
    recorded = read_run_config(run)["config"] if run is not None else {}
    taken = {k: recorded[k] for k in RUN_SETTINGS if k not in explicit and k in recorded}
    cfg = replace(cfg, **taken)
    values = ", ".join(f"{label} {_shown(getattr(cfg, k))}" for k, label in RUN_SETTINGS.items())
    given = [f"--{k.replace('_', '-')}" for k in RUN_SETTINGS if k in explicit]
    if run is None:
        where = "the flags' (--model is in no kto-train run)"
    else:
        where = f"the run's, from {record_path(run)}" + (f", but {', '.join(given)} as given" if given else "")
    return cfg, f"settings: {values}: {where}"


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def eval_accelerator(cfg: TrainConfig) -> Accelerator:
    """The run's accelerator, less what only training uses (trackers, FSDP, a project folder)."""
    import torch
    from accelerate import Accelerator

    from .setup import mixed_precision_in_force

    return Accelerator(mixed_precision=mixed_precision_in_force(cfg), cpu=not torch.cuda.is_available())


def evaluated(cfg: TrainConfig, accelerator: Accelerator) -> dict:
    """train/evaluate.py `evaluate` of the policy on the eval cache, under `evaluation_mode`, with
    the run's checks: the tokenizer, the positions, and with --cache the eval-vs-train checks."""
    from kto.formats.cache import open_cache
    from kto.formats.compute.loading import load_completion_logps
    from kto.formats.compute.logprob import check_cache_positions
    from kto.formats.compute.numerics import torch_dtype
    from kto.formats.compute.policy_dirs import policy_to_load, policy_tokenizer
    from kto.formats.metrics_line import EVAL_CACHE_KEY, eval_cache_name

    from .eval_cache import open_eval_cache
    from .evaluate import evaluate
    from .loop import evaluation_mode
    from .setup import loss_settings, packs_allowed

    if cfg.cache is not None:  # a config reused from training: its eval cache checked as the run checks it
        eval_cache = open_eval_cache(cfg, open_cache(cfg.cache), accelerator)
    else:
        eval_cache = open_cache(cfg.eval_cache)
    policy = policy_to_load(str(cfg.model), cfg.base_model)
    tokenizer = policy_tokenizer(policy, eval_cache.manifest.content.tokenizer, str(cfg.model), cfg.trust_remote_code)
    model = load_completion_logps(
        policy.source,
        dtype=torch_dtype(cfg.dtype),
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        chunk_size=cfg.chunk_size,
        adjust=policy.adjust,
    )
    if policy.note:
        log(policy.note.replace("note: scoring", "note: evaluating"), accelerator)
    check_cache_positions(eval_cache, model.lm, f"--model {cfg.model}", "--eval-cache")  # one line, not an IndexError
    settings = loss_settings(cfg, cfg.prefix_sharing and packs_allowed(lambda: model.lm, accelerator))
    # Mixed precision and placement as training's prepare gives them; no DDP wrapper (nothing
    # trains): every process scores its share of the rows, and `evaluate` sums them over ranks.
    model = accelerator.prepare_model(model, evaluation_mode=True)
    with evaluation_mode(model):
        result = evaluate(model, eval_cache, settings, tokenizer.pad_token_id, cfg.eval_rows_per_batch, accelerator)
    return {**result, EVAL_CACHE_KEY: eval_cache_name(eval_cache.manifest.fingerprint)}


def report(cfg: TrainConfig, line: dict, target: Path | None) -> None:
    """Main process: training's eval line said of the model, the JSON on stdout, and OUT/eval_results.json."""
    from kto.formats.atomic import write_json_atomic

    from .progress import number

    log(f"eval of {cfg.model} on {cfg.eval_cache}: loss {number(line['loss'])} margin {number(line['rewards/margins'])}")
    print(json.dumps(line), file=sys.stdout, flush=True)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target, line)
        log(f"wrote {target}")
