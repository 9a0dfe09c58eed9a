"""kto-train --eval-only: the eval line of a model after a run, with no training.

--model (anything `kto-inspect score --model` takes: formats/compute/policy_dirs.py) is
evaluated on --eval-cache by `evaluate`, under `evaluation_mode`, the very function and mode the
run's own evaluations use, so a run's checkpoint-STEP/ gives the run's eval line at STEP. No
optimizer, no run directory, no checkpoint, no reference model. The loss settings (β, the class
weights, --loss, --sft-weight) and what shapes the numbers (--dtype, --mixed-precision, the batch
sizes, prefix sharing, --chunk-size, attention) are the run's where --model lies in a kto-train
run, unless given (RUN_SETTINGS). The line is printed (a human line on stderr, the JSON
on stdout) and, with --out DIR, written to DIR/eval_results.json (the file transformers' Trainer
and LLaMA-Factory write), once, by the main process of a launch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from kto.formats.compute.policy_dirs import RunOf
from kto.formats.errors import InputError, log, on_main
from kto.formats.files import missing_paths, output_dir, remove_made

from .config import DEFAULTS, TrainConfig

if TYPE_CHECKING:
    from accelerate import Accelerator

    from kto.formats.cache import ShardedCache

EVAL_RESULTS = "eval_results.json"

# --eval-only: the settings taken from the run where --model is a run's and they are not given,
# with how the settings line shows them (None: taken, not shown): the loss, and what shapes its
# numbers (a bf16 run's evals ran in bf16; another eval batch size rounds the last place otherwise).
RUN_SETTINGS: dict[str, str | None] = {
    "beta": "β",
    "desirable_weight": "desirable weight",
    "undesirable_weight": "undesirable weight",
    "loss": "loss",
    "sft_weight": "sft weight",
    "dtype": "dtype",
    "mixed_precision": "mixed precision",
    "batch_size": None,
    "eval_batch_size": None,
    "prefix_sharing": None,
    "chunk_size": None,
    "attn_implementation": "attention",  # only a built-in name is taken (recorded_attention)
    "gradient_checkpointing": None,  # it turns the policy pass's packing off (setup.py loss_settings)
    "load_in_4bit": None,  # a QLoRA run's adapters on its base quantized as in training
    "load_in_8bit": None,
}
# What --eval-only uses: those, the model, the caches and --out; every other setting trains.
EVAL_SETTINGS = frozenset(RUN_SETTINGS) | {"cache", "model", "out", "eval_cache", "eval_only", "base_model", "trust_remote_code"}


def training_only(names: set[str] | frozenset[str]) -> list[str]:
    """The settings among `names` that --eval-only does not use, as their flags, in field order."""
    return [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig) if f.name in names and f.name not in EVAL_SETTINGS]


def eval_only_refusal(cfg: TrainConfig, given: set[str]) -> None:
    """--eval-only with training flags on the command line (`given`): refused, one line naming
    them. From a --config file (one reused from training) or the Python API they are left
    unused, said in a note (evaluate_policy)."""
    named = training_only(given) if cfg.eval_only else []
    if named:
        them = "it" if len(named) == 1 else "them"
        raise InputError(f"--eval-only: {', '.join(named)} only train{'s' if len(named) == 1 else ''}; nothing here uses {them} (leave {them} out)")


def evaluate_policy(cfg: TrainConfig, explicit: set[str] | None = None, print_json: bool = False) -> dict:
    """Evaluate cfg.model on cfg.eval_cache (cfg.eval_only and `hf:` caches fetched: see
    api.evaluate_model); return the eval line: the keys of a metrics.jsonl eval line (loss, kl,
    rewards/*, ..., eval_cache; a value that does not exist is None, as there) and `model`.

    `explicit`: the settings given (the CLI: on the command line or in --config); None: those
    that differ from their defaults (the Python API). A RUN_SETTINGS one not given is the run's.
    print_json: the CLI's JSON line on stdout (main process)."""
    explicit = off_defaults(cfg) if explicit is None else explicit
    target, made = results_path(cfg.out)  # before anything loads
    with removed_if_failed(made):
        return _evaluate(cfg, explicit, print_json, target)


def _evaluate(cfg: TrainConfig, explicit: set[str], print_json: bool, target: Path | None) -> dict:
    """evaluate_policy's work once --out is checked (and made): the run's settings, the eval, the report."""
    from kto.formats.launch_agreement import check_launch_agreement

    from .processes import borrowed_accelerate_state, borrowed_rng_state
    from .setup import launch_settings_of

    refuse_a_run_directory(str(cfg.model))
    run = RunOf.model(cfg.model)
    cfg = with_run_settings(cfg, run, explicit)
    with borrowed_accelerate_state(), borrowed_rng_state():
        accelerator = eval_accelerator(cfg)
        check_launch_agreement(lambda: launch_settings_of(cfg), accelerator)  # the run's settings taken in: what each process evaluates with
        unused = training_only(explicit)
        if unused:
            log(f"note: --eval-only: {', '.join(unused)} only train; not used here", accelerator)
        eval_cache = checked_eval_cache(cfg, run, accelerator)  # refusals first, then what is used
        log(settings_line(cfg, run, explicit), accelerator)
        line = {**eval_line(cfg, eval_cache, accelerator), "model": str(cfg.model)}
        # On the main process; its refusal (a stdout that cannot take the JSON) stops every rank
        # alike, where the others, left at a barrier, failed with a traceback.
        on_main(lambda: report(cfg, line, target, print_json), accelerator)
    return line


def refuse_a_run_directory(model: str) -> None:
    """--model RUN (a kto-train run directory, not a model): refused as loading it would refuse it
    (policy_dirs.policy_to_load: "give RUN/final"), but before the settings line, which would
    say first that --model is in no kto-train run."""
    from kto.formats.compute.adapters import is_adapter_dir
    from kto.formats.compute.sharded import is_sharded_checkpoint
    from kto.formats.runrecord import refuse_run_dir_as_model

    given = Path(model).expanduser()
    if given.is_dir() and not is_adapter_dir(given) and not is_sharded_checkpoint(given):
        refuse_run_dir_as_model(given, model, "--model", adapters_ok=True)


def off_defaults(cfg: TrainConfig) -> set[str]:
    """The Python API's given settings: those off their defaults (a default passed is not told apart)."""
    return {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != DEFAULTS[f.name]}


def results_path(out: Path | None) -> tuple[Path | None, list[Path]]:
    """OUT/eval_results.json, or None without --out, and the folders made for it (innermost
    first). Refused (one line) where OUT is a file, a kto-precompute cache or a kto-train run
    directory (they hold only their own files), or in one, and where it cannot be made or
    written (a read-only filesystem, a full disk, a file above it, a name too long): now, before
    the evaluation, as training refuses its --out before training. A missing OUT is made here,
    as training makes its --out; `removed_if_failed` removes it again if the command fails."""
    from kto.formats.atomic import NotWritableError, check_can_create
    from kto.formats.cache import refuse_inside_others

    if out is None:
        return None, []
    if os.path.exists(out) and not os.path.isdir(out):  # os.path's: a name too long is output_dir's to say
        raise InputError(f"--out {out}: not a directory (--eval-only writes OUT/{EVAL_RESULTS})")
    output_dir(out, f"--out {out}")  # training's check of --out: a file or a link to nothing above it, a name too long
    target = out / EVAL_RESULTS
    if target.is_dir() or target.is_symlink() and not target.is_file():
        raise InputError(f"--out {out}: {target} is not a file it can replace; name another --out")
    refuse_inside_others(target)  # OUT itself may be the cache or the run: the file would lie inside it
    made = missing_paths(out)
    try:
        out.mkdir(parents=True, exist_ok=True)  # a full disk refuses a new folder (ext4: it needs a block)
    except OSError as exc:
        remove_made(made)  # the folders above OUT that were made before the failure
        raise InputError(f"--out {out}: cannot create ({exc.strerror})") from None
    try:
        check_can_create(target)  # a read-only folder: refused now, not after the evaluation
    except NotWritableError as exc:
        remove_made(made)
        raise InputError(f"--out {exc}") from None
    return target, made


@contextlib.contextmanager
def removed_if_failed(made: list[Path]) -> Iterator[None]:
    """The folders results_path made for --out (`made`), removed again if the block fails and
    they are still empty: a refused or stopped evaluation leaves no folder behind, as a failed
    start of training leaves no run directory."""
    try:
        yield
    except BaseException:
        remove_made(made)
        raise


def with_run_settings(cfg: TrainConfig, run: RunOf, explicit: set[str]) -> TrainConfig:
    """cfg with the run's RUN_SETTINGS (RUN/kto_run.json) that were not given. The run's
    quantization only for its adapter folders (final/, checkpoint-STEP/: on the base as it
    trained): final-merged/ holds the adapters merged into the unquantized base, and is
    evaluated as saved (its model card's command), not quantized itself."""
    from kto.formats.compute.adapters import is_adapter_dir

    recorded = run.record.get("config", {})
    bits = {"load_in_4bit", "load_in_8bit"}
    if explicit & bits or not is_adapter_dir(Path(str(cfg.model)).expanduser()):  # one setting in two flags: either given decides both
        explicit = explicit | bits
    if "attn_implementation" not in explicit and "attn_implementation" in recorded:
        refuse_recorded_attention(recorded["attn_implementation"], run)
    return replace(cfg, **{k: recorded[k] for k in RUN_SETTINGS if k not in explicit and k in recorded})


def refuse_recorded_attention(attn: object, run: RunOf) -> None:
    """The run's attn_implementation, taken only where transformers has it built in (sdpa, eager,
    flash_attention_2, ...). A kernels-hub repo `org/repo` makes the load fetch and run that
    repo's code, and a record is a file anyone may have edited or copied in: code is fetched or
    run only where the user names it (--attn-implementation, or --config). Refused rather than
    replaced by the default: another attention would change the numbers' last places, and the
    eval line would no longer be the run's own."""
    from kto.formats.compute.load_options import built_in_attention
    from kto.formats.runrecord import record_path

    if not built_in_attention(attn):
        raise InputError(
            f"{record_path(run.directory)}: the run's attn_implementation {attn!r} is not an attention implementation transformers has "
            "built in (a kernels-hub repo's code is fetched and run only where you name it); give --attn-implementation: sdpa, "
            "or that repo to use its kernel"
        )


def settings_line(cfg: TrainConfig, run: RunOf, explicit: set[str]) -> str:
    """Which loss settings and numerics are used, and where they come from."""
    from kto.formats.runrecord import record_path

    values = ", ".join(f"{label} {_shown(getattr(cfg, k))}" for k, label in RUN_SETTINGS.items() if label)
    if cfg.load_in_4bit or cfg.load_in_8bit:
        values += f", base loaded in {4 if cfg.load_in_4bit else 8} bits"
    given = [f"--{k.replace('_', '-')}" for k in RUN_SETTINGS if k in explicit]
    if run.directory is None:
        where = ("the flags'" if given else "the defaults'") + " (--model is in no kto-train run)"
    else:
        where = f"the run's, from {record_path(run.directory)}" + (f", but {', '.join(given)} as given" if given else "")
    return f"settings: {values}: {where}"


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def eval_accelerator(cfg: TrainConfig) -> Accelerator:
    """The run's accelerator, less what only training uses (trackers, FSDP, a project folder)."""
    import torch
    from accelerate import Accelerator

    from .setup import mixed_precision_in_force

    return Accelerator(mixed_precision=mixed_precision_in_force(cfg), cpu=not torch.cuda.is_available())


def checked_eval_cache(cfg: TrainConfig, run: RunOf, accelerator: Accelerator) -> ShardedCache:
    """--eval-cache, checked as a run checks it against its training cache (the same reference,
    tokenizer, numerics and template; no shared rows). Where --model is a run's, that cache is
    the run's own: --cache must be it (its recorded fingerprint), else its recorded path where it
    still holds it; without it, the run's own eval cache passes, and another only if scored by
    the run's reference (RunOf.require_its_reference): another reference's rewards would be measured wrong."""
    from kto.formats.cache import open_cache

    from .eval_cache import open_eval_cache

    if cfg.cache is not None:
        train = open_cache(cfg.cache)
        if run.directory is not None:
            run.require_its_cache(train.manifest.fingerprint, f"--cache {cfg.cache}")
        return open_eval_cache(cfg, train, accelerator)
    recorded = run.training_cache()  # its manifest read unheld first: a rebuilt cache's shards are not held
    if recorded is not None:
        log(f"--eval-cache {cfg.eval_cache}: checked against the run's --cache {recorded}, as training checks it", accelerator)
        return open_eval_cache(replace(cfg, cache=recorded), open_cache(recorded), accelerator)
    cache = open_cache(cfg.eval_cache)
    if run.directory is not None and cache.manifest.fingerprint != run.derived.get("eval_cache_fingerprint"):
        run.require_its_reference(
            cache.manifest.content.model, f"--eval-cache {cfg.eval_cache}", "give the run's cache as --cache, or evaluate on a cache of its reference"
        )
    return cache


def eval_line(cfg: TrainConfig, eval_cache: ShardedCache, accelerator: Accelerator) -> dict:
    """train/evaluate.py `evaluate` of the policy on the (checked) eval cache, under
    `evaluation_mode`, with the run's checks of the tokenizer and the positions."""
    from kto.formats.compute.identity import model_identity
    from kto.formats.compute.loading import load_completion_logps
    from kto.formats.compute.logprob import check_cache_positions
    from kto.formats.compute.numerics import torch_dtype
    from kto.formats.compute.policy_dirs import policy_to_load, policy_tokenizer
    from kto.formats.metrics_line import EVAL_CACHE_KEY, eval_cache_name

    from .adapters import quantization_config
    from .evaluate import evaluate
    from .loop import evaluation_mode
    from .setup import loss_settings, packs_allowed

    policy = policy_to_load(str(cfg.model), cfg.base_model)
    tokenizer = policy_tokenizer(policy, eval_cache.manifest.content.tokenizer, str(cfg.model), cfg.trust_remote_code)
    quantization = quantization_config(cfg, accelerator.device.type, accelerator.mixed_precision)
    model = load_completion_logps(
        policy.source,
        dtype=torch_dtype(cfg.dtype),
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
        chunk_size=cfg.chunk_size,
        adjust=policy.adjust,
        quantization_config=quantization,
        # bitsandbytes weights cannot be moved after loading: on this process's device, as training puts them.
        device_map={"": accelerator.device} if quantization else None,
    )
    if policy.what:
        log(f"note: evaluating {policy.what}", accelerator)
    if policy.adjust is None and eval_cache.manifest.content.scored_with(model_identity(policy.source)):
        log("note: --model is the eval cache's reference model; every reward and the KL should be about 0", accelerator)
    check_cache_positions(eval_cache, model.lm, f"--model {cfg.model}", "--eval-cache")  # one line, not an IndexError
    settings = loss_settings(cfg, cfg.prefix_sharing and packs_allowed(lambda: model.lm, accelerator))
    # Mixed precision and placement as training's prepare gives them; no DDP wrapper (nothing
    # trains): every process scores its share of the rows, and `evaluate` sums them over ranks.
    model = accelerator.prepare_model(model, evaluation_mode=True)
    with evaluation_mode(model):
        result = evaluate(model, eval_cache, settings, tokenizer.pad_token_id, cfg.eval_rows_per_batch, accelerator)
    # As metrics.jsonl writes them: a value that does not exist (rewards/rejected without undesirable rows) is null.
    finite = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
    return {**finite, EVAL_CACHE_KEY: eval_cache_name(eval_cache.manifest.fingerprint)}


def report(cfg: TrainConfig, line: dict, target: Path | None, print_json: bool) -> None:
    """Main process: training's eval line said of the model, the JSON on stdout (the CLI), and OUT/eval_results.json."""
    from kto.formats.atomic import names_write_errors, write_json_atomic
    from kto.formats.signals import console_error, write_result

    from .progress import number

    log(f"eval of {cfg.model} on {cfg.eval_cache}: loss {number(line['loss'])} margin {number(line['rewards/margins'])}")
    unwritten = None  # stdout closed or full: said after --out's file is written, which does not depend on it
    if print_json:
        try:
            write_result(json.dumps(line) + "\n")
        except OSError as exc:
            unwritten = exc
    if target is not None:
        with names_write_errors(target):  # made by results_path; again only if removed during the evaluation
            target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target, line)
        log(f"wrote {target}")
    if unwritten is not None:
        kept = f"; it is in {target}" if target is not None else ""
        raise InputError(f"{console_error('stdout', unwritten)}: the eval line (JSON) was not written{kept}")
