"""`kto-train`: train only the policy, streaming cached reference log-probs into the KTO loss.

Every option mirrors a TrainConfig field (tests/train/test_data.py,
`test_cli_options_mirror_config_fields`, keeps them in step). Values come from defaults, then
`--config FILE`, then flags actually given on the command line.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kto.formats.compute.early_checks import check_local_cache, check_local_model
from kto.formats.config_adapters import adapters_in_force, rank_in_force
from kto.formats.config_data import data_disagreements
from kto.formats.config_file import file_key_error, option_value
from kto.formats.config_keys import TRAIN, names_other_tools_use, precompute_disagreements, target_modules_value
from kto.formats.config_names import PEFT_TARGETS, Resolved
from kto.formats.errors import InputError, exception_line, exit_on_signal, log, one_line_errors
from kto.formats.paths import HOME_PATH, HOME_TEXT
from kto.formats.signals import Stopped, raising_on_stop_signals

from .config import DEFAULTS, DTYPES, KL_SCOPES, MIXED_PRECISION, SCHEDULES, TrainConfig, load_config_file, require_paths
from .eval_only import eval_only_refusal
from .loss_type import LossType
from .stop import Interrupted, PushInterrupted

LATEST = "latest"  # `--resume` without a path
EXPLICIT = "kto.explicit"  # ctx.meta: the settings the command line or --config gave


@click.command(cls=names_other_tools_use(TRAIN), context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--cache", type=HOME_PATH, help="Cache directory written by kto-precompute (not CACHE/eval: pass that as --eval-cache).")
@click.option(
    "--model", help="Policy initialisation: local HF dir, .gguf file or hub id (--eval-only: the model evaluated, a run's final/ or checkpoint-STEP/ too)."
)
@click.option("--out", type=HOME_PATH, help="Run directory (--eval-only: where eval_results.json is written; nothing without it).")
@click.option("--config", "config_file", type=HOME_PATH, default=None, help="YAML or TOML file of flag values.")
@click.option("--beta", default=0.1)
@click.option("--desirable-weight", default=1.0)
@click.option("--undesirable-weight", default=1.0)
@click.option("--auto-weights/--no-auto-weights", default=False, help="Set w_D so (w_D·n_D)/(w_U·n_U) ∈ [1, 4/3] (--no-auto-weights: off, over a config file).")
@click.option("--loss", default="kto", type=click.Choice([t.value for t in LossType]))
@click.option("--sft-weight", default=0.0, help="γ · mean NLL of desirable completion tokens.")
@click.option("--lr", default=1e-6)
@click.option(
    "--lr-schedule",
    default="linear",
    help=f"One of transformers' get_scheduler kinds that step without a metric: {', '.join(SCHEDULES)}.",  # checked by TrainConfig, which says why the others are refused
)
@click.option("--lr-schedule-kwargs", default=None, help="JSON object for get_scheduler, e.g. '{\"min_lr_rate\": 0.1}'.")
@click.option("--warmup-ratio", default=0.1, help="Rounded down; --warmup-steps wins when set.")
@click.option("--warmup-steps", default=0, help="Wins over --warmup-ratio when above 0; 0 given without --warmup-ratio: no warmup.")
@click.option("--weight-decay", default=0.0)
@click.option("--adam-beta1", default=0.9, help="AdamW's β1.")
@click.option("--adam-beta2", default=0.999, help="AdamW's β2.")
@click.option("--adam-epsilon", default=1e-8, help="AdamW's ε.")
@click.option("--max-grad-norm", default=1.0, help="0 disables clipping.")
@click.option("--batch-size", default=8, help="Per process (--eval-only: the eval micro-batch unless --eval-batch-size, or the run's, is set).")
@click.option("--grad-accum", default=1)
@click.option("--epochs", default=1.0, help="May be fractional: ⌈epochs × steps per epoch⌉ steps.")
@click.option("--max-steps", default=None, type=int)
@click.option(
    "--seed", default=0, help="Seed of the data order (each epoch's plan), the LoRA adapters' initialisation and dropout (the same on every process)."
)
@click.option("--kl-scope", default="step", type=click.Choice(KL_SCOPES))
@click.option("--mixed-precision", default="auto", type=click.Choice(MIXED_PRECISION))
@click.option("--dtype", default="fp32", type=click.Choice(DTYPES), help="Weight dtype.")
@click.option("--gradient-checkpointing", is_flag=True)
@click.option(
    "--prefix-sharing/--no-prefix-sharing",
    default=True,
    help="Run a prompt shared by rows of a step once (each step's numbers the same to fp32 rounding, less compute). It also gathers rows that share a prompt (paired data) into the same micro-batch, so --no-prefix-sharing trains on other steps there: another run, not a check of this one.",
)
@click.option("--keep-dropout", is_flag=True, help="Keep the model's dropout and --lora-dropout (disabled by default).")
@click.option("--log-every", default=10, help="Log train metrics every N steps, and the last step (0: no train lines in metrics.jsonl).")
@click.option("--save-every", default=0, help="Checkpoint every N steps (0: final model only).")
@click.option("--save-each-epoch", is_flag=True, help="Also checkpoint after each epoch (transformers' save_strategy epoch).")
@click.option("--save-total-limit", default=0, help="Keep only the newest N checkpoints of --save-every / --save-each-epoch (0: keep all).")
@click.option("--eval-cache", type=HOME_PATH, default=None)
@click.option("--eval-every", default=0, help="Also evaluate every N steps (needs --eval-cache; it is always evaluated after the last step).")
@click.option("--eval-each-epoch", is_flag=True, help="Also evaluate after each epoch (transformers' eval_strategy epoch).")
@click.option(
    "--eval-batch-size", default=None, type=int, help="Eval rows per micro-batch, per process (the same numbers to fp32 rounding) [default: --batch-size]."
)
@click.option(
    "--eval-only",
    is_flag=True,
    help="Train nothing: evaluate --model on --eval-cache as a run's evaluations do (the run's loss settings and numerics when --model is a run's), print the eval line as JSON.",
)
@click.option("--base-model", default=None, help="--eval-only: the base of a LoRA adapter or FSDP checkpoint --model [default: the one it or its run names].")
@click.option(
    "--resume",
    type=HOME_TEXT,
    is_flag=False,
    flag_value=LATEST,
    default=None,
    metavar="[CHECKPOINT]",
    help="Continue from RUN/checkpoint-STEP (with --out RUN, checkpoint-STEP) [default: the latest].",
)
@click.option("--report-to", default="none", help="none, all, or a comma list of tensorboard, wandb, mlflow, ... (see README).")
@click.option("--run-name", default=None, help="The run's name in the trackers [default: the name of --out].")
@click.option(
    "--drift-tolerance",
    default=None,
    type=float,
    help="Step-0 per-token |Δ| allowed [default: by precision]; refused where the check cannot run (--model not the cache's reference, a --no-token-logps cache), except on --resume.",
)
@click.option("--chunk-size", default=1024)
@click.option("--trust-remote-code", is_flag=True)
@click.option("--attn-implementation", default="sdpa")
@click.option("--lora-r", default=0, help="LoRA rank; 0 trains every weight.")
@click.option("--lora-alpha", default=16.0)
@click.option("--lora-dropout", default=0.0, help="Applied only with --keep-dropout (dropout is off by default, the adapters' too, as in TRL).")
@click.option("--lora-target-modules", default=None, help="Comma list, or all-linear [default: every decoder linear layer]; needs --lora-r.")
@click.option("--load-in-4bit", is_flag=True, help="QLoRA: 4-bit NF4 base weights (bitsandbytes).")
@click.option("--load-in-8bit", is_flag=True, help="8-bit base weights (bitsandbytes).")
@click.option("--merge-adapters", is_flag=True, help="Also write OUT/final-merged (base + adapters).")
@click.option("--fsdp", is_flag=True, help="FSDP2 sharding (as accelerate launch --use_fsdp).")
@click.version_option(package_name="kto-offline", prog_name="kto-train")
@click.option("--push-to-hub", default=None, help="Upload final/ to this hub model repo (ORG/NAME) at the end; the repo is created (token checked) first.")
@click.option("--hub-private/--no-hub-private", default=False, help="Create the --push-to-hub repo private (--no-hub-private: public, over a config file).")
@click.pass_context
@one_line_errors("kto-train")
def main(ctx: click.Context, config_file: Path | None, **flags: Any) -> None:
    """Train the policy from a kto-precompute cache; no reference model is loaded. With --eval-only, evaluate --model on --eval-cache instead."""
    # From the start: a signal while torch imports or the model loads says so (formats/signals.py);
    # the loop takes the signals over and stops at a step boundary instead (train/stop.py).
    with raising_on_stop_signals():
        from .api import evaluate_model, run  # the Python API: this command is flags → TrainConfig → run()
        from .processes import end_own_process_group, process_group_exists

        try:
            with config_in_force(ctx, config_file, flags, check=check_paths) as cfg:  # its refusals, the run's too, name the file's key
                existed = process_group_exists()  # after check_paths: it imports torch
                if cfg.eval_only:
                    evaluate_model(cfg, explicit=ctx.meta[EXPLICIT], print_json=True)
                else:
                    run(cfg)
        except Interrupted as exc:  # a signal stopped the run at a step boundary or its push, what to run next already printed
            # A stopped push: the main process alone pushes, the others ended without waiting for it.
            end_own_process_group(existed, main_process_busy=isinstance(exc, PushInterrupted))
            sys.exit(exc.exit_code)
        except Stopped as exc:
            exit_on_signal("kto-train", exc.signum, "no step was trained in this run and nothing new saved; run the same command again")
    end_own_process_group(existed, main_process_busy=cfg.push_to_hub is not None)  # the API keeps a group it made for the next call; the command ends here


def check_paths(cfg: TrainConfig) -> None:
    """The start-up checks of --cache, --model and --eval-cache that need neither torch nor
    transformers, in train/setup.py check_inputs' order, made before the run imports them: a
    typo is refused in a second instead of after those imports. Writes nothing. With
    --eval-only, --model may be an adapter directory or a sharded checkpoint: policy_dirs
    checks it when it loads.

    With adapters (--lora-r > 0, adapters.enabled) check_inputs refuses a missing peft or
    bitsandbytes first of all, before the cache is read; that check imports them (and torch),
    so these are left to the run then, to keep that order."""
    if cfg.eval_only:
        for cache in (cfg.cache, cfg.eval_cache):
            if cache is not None:
                check_local_cache(cache)
        return
    if cfg.lora_r > 0:
        return
    check_local_cache(cfg.cache)
    check_local_model(cfg.model)
    if cfg.eval_cache is not None:
        check_local_cache(cfg.eval_cache)


def config_from(ctx: click.Context, config_file: Path | None, flags: dict[str, Any], check: Callable[[TrainConfig], None] = lambda cfg: None) -> TrainConfig:
    """Defaults < --config FILE < command-line flags, then one TrainConfig, `check`ed (main's
    start-up path checks): a refusal of a value the file set names the file's key."""
    with config_in_force(ctx, config_file, flags, check) as cfg:
        return cfg


@contextlib.contextmanager
def config_in_force(ctx: click.Context, config_file: Path | None, flags: dict[str, Any], check: Callable[[TrainConfig], None]) -> Iterator[TrainConfig]:
    """config_from's TrainConfig, for the body of the with: a refusal raised in it (the run's,
    such as `--lora-target-modules q_proj,x: --model has no linear layer named x`) names the
    file's key as well, when the file set that option."""
    options = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    values: dict[str, Any] = {}
    resolved = Resolved()
    given = lambda name: ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    if config_file:
        resolved = load_config_file(config_file)
        # Errors name the key as the file spells it (torch_dtype, not dtype).
        values = {k: config_value(options[k], resolved.origin.get(k, k), v, config_file) for k, v in resolved.values.items()}
    for name, value in flags.items():
        if given(name) or name not in values:
            values[name] = value
    # The settings given on the command line or written in the file (not the defaults of the tool
    # whose names it uses): --eval-only takes the run's others.
    on_command_line = {name for name in flags if given(name)}
    ctx.meta[EXPLICIT] = on_command_line | (set(resolved.values) - resolved.defaulted) | set(resolved.forced)
    try:
        cfg = merged_config(ctx, config_file, resolved, values, given)
        eval_only_refusal(cfg, on_command_line)
        auto_weights_refusal(cfg, on_command_line, ctx.meta[EXPLICIT])
        check(cfg)
        yield cfg
    except InputError as exc:
        # A check names the flag; a value the file set is named by the file's key.
        raise (file_key_error(exc, config_file, TRAIN, resolved, values, given) if config_file else exc) from None


def auto_weights_refusal(cfg: TrainConfig, on_command_line: set[str], explicit: set[str]) -> None:
    """--auto-weights replaces the desirable weight: one given too would be dropped without a
    word, a deliberate --desirable-weight 0 turned back on. Given on the command line, or in
    --config (`explicit`) at another value than the default 1 (files dumped by TRL write
    desirable_weight 1.0 whatever was meant)."""
    if not cfg.auto_weights or cfg.eval_only or "desirable_weight" not in explicit:
        return
    if "desirable_weight" in on_command_line or cfg.desirable_weight != DEFAULTS["desirable_weight"]:
        off = "" if "auto_weights" in on_command_line else " (--no-auto-weights turns off a config file's)"
        raise InputError(
            f"--auto-weights: it chooses the desirable weight, so --desirable-weight {cfg.desirable_weight:g} would be replaced; give one of the two{off}"
        )


def merged_config(ctx: click.Context, config_file: Path | None, resolved: Resolved, values: dict[str, Any], given: Callable[[str], bool]) -> TrainConfig:
    """The merged `values` (completed in place) as one TrainConfig; `given`: set on the command line."""
    if config_file:  # the file's LoRA keys that the command line settles (--lora-r, --eval-only, --model)
        rank_in_force(config_file, resolved, values, given)
        adapters_in_force(config_file, resolved, values, given)
    values["lora_target_modules"] = target_modules_value(values.get("lora_target_modules"))
    unset_lora_settings_of_files_without_rank(ctx, values)
    if config_file and resolved.alpha_twice_rank and given("lora_r"):
        if not given("lora_alpha") and values["lora_r"] > 0:
            values["lora_alpha"] = 2.0 * values["lora_r"]  # LLaMA-Factory's 2 × rank, of the rank in force (--lora-r 0: no LoRA, no alpha)
    values["resume"] = resume_value(values["resume"])
    values["lr_schedule_kwargs"] = schedule_kwargs(values["lr_schedule_kwargs"])
    if values.get("out") is None and isinstance(values["resume"], Path):
        values["out"] = values["resume"].parent  # `--resume RUN/checkpoint-STEP` names its run
    try:
        require_paths(values)  # before the file's settings are read: they may use --cache
    except InputError as exc:  # an axolotl file's base_model is its model: say so with the refusal
        said = [note for note in resolved.notes if "axolotl's base_model" in note] if values.get("model") is None else []
        raise InputError("; ".join([str(exc), *said])) from None
    if config_file:
        from_config_file(ctx, config_file, resolved, values)
    zero_warmup_steps(resolved, values, given)
    return TrainConfig(**values)


def zero_warmup_steps(resolved: Resolved, values: dict[str, Any], given: Callable[[str], bool]) -> None:
    """`--warmup-steps 0` (or `warmup_steps: 0` in the file) with no warmup ratio given: no
    warmup, as transformers reads it (0 steps defers to warmup_ratio, whose default there is 0).
    kto-train's own warmup_ratio 0.1 is for runs that give neither, not a silent tenth of this one."""
    in_file = "warmup_steps" in resolved.values and not given("warmup_steps")
    ratio_given = given("warmup_ratio") or "warmup_ratio" in resolved.values or "warmup_ratio" in resolved.defaults
    if not (given("warmup_steps") or in_file) or values.get("warmup_steps") != 0 or ratio_given or not values.get("warmup_ratio"):
        return
    if values.get("eval_only"):
        return  # refused (--warmup-steps only trains), or the run's own taken in
    if values.get("resume") and (recorded := recorded_warmup_ratio(values)) is not None:
        values["warmup_ratio"] = recorded  # a run begun before this reading (0.1 with warmup_steps 0) resumes as it ran
        return
    values["warmup_ratio"] = 0.0
    said = f"{resolved.key_of('warmup_steps')}: 0" if in_file else "--warmup-steps 0"
    log(f"kto-train: {said} without a warmup ratio: no warmup, as transformers reads it (kto-train's own warmup_ratio 0.1 is for runs that give neither)")


def recorded_warmup_ratio(values: dict[str, Any]) -> float | None:
    """The warmup_ratio the run at --out recorded beside warmup_steps 0, or None (no readable
    record, or another warmup_steps: the resume compares it in its own words)."""
    from kto.formats.runrecord import read_run_config

    if values.get("out") is None:
        return None
    try:
        recorded = (read_run_config(values["out"]) or {}).get("config", {})
    except InputError:
        return None
    return recorded.get("warmup_ratio") if recorded.get("warmup_steps") == 0 else None


def unset_lora_settings_of_files_without_rank(ctx: click.Context, values: dict[str, Any]) -> None:
    """A --config file's lora_alpha and lora_dropout without a LoRA rank go back to their
    defaults: a dumped TRL config holds them whatever use_peft. Given on the command line (or in
    the Python API) they stay, and TrainConfig refuses them (without a rank every weight is
    trained). --lora-target-modules on the command line is refused here, as before. Not on
    --resume: the printed resume command repeats such a file's values, and the run record
    decides whether they match."""
    if values.get("lora_r") != 0 or values.get("resume"):
        return
    if ctx.get_parameter_source("lora_target_modules") == ParameterSource.COMMANDLINE:
        raise InputError("--lora-target-modules: needs --lora-r R > 0 (without it every weight is trained)")
    for name in ("lora_alpha", "lora_dropout"):
        if ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE:
            values[name] = DEFAULTS[name]


def from_config_file(ctx: click.Context, path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """What a --config file asks that needs the values in force (the command line's included):
    peft's LoRA targets for the model, the eval cache of `val_size`, transformers 5's shares of the
    total steps, and kto-precompute's keys against the cache."""
    peft_default_targets(ctx, path, resolved, values)
    for note in resolved.notes:
        if "axolotl's base_model" not in note:  # said only with the missing --model refusal (merged_config)
            log(f"kto-train: {note}")
    lora_rank_for_lora(ctx, path, resolved, values)
    keep_recorded_defaults(ctx, path, resolved, values)
    if resolved.eval_in_cache and values.get("eval_cache") is None and values.get("cache") is not None:
        # LLaMA-Factory's val_size or TRL's dataset_test_split: kto-precompute wrote those rows to CACHE/eval.
        values["eval_cache"] = Path(values["cache"]) / "eval"
        held_out = "val_size" if resolved.values.get("eval_fraction") or "val_size" in resolved.other_values else "dataset_test_split"
        log(f"kto-train: --config {path}: {held_out} -> --eval-cache {values['eval_cache']}")
    hub_from_the_command_line(ctx, path, resolved, values)
    eval_follows_log_every(ctx, path, resolved, values)
    if values.get("eval_cache") is None:
        no_eval_set(ctx, path, resolved, values)
    step_shares(ctx, path, resolved, values)
    check_cache_agrees(path, resolved, values)


def lora_rank_for_lora(ctx: click.Context, path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """A file that asks for LoRA (`finetuning_type: lora`, LLaMA-Factory's default, or `use_peft:
    true`) with a rank below 1: here lora_r 0 trains every weight, silently not what the file
    says, and peft refuses r 0 there; `--lora-r 0` on the command line too (the file asks for
    LoRA, and the note printed says LoRA is on)."""
    if not resolved.lora_asked_by or values["lora_r"] >= 1:
        return
    if ctx.get_parameter_source("lora_r") == ParameterSource.COMMANDLINE:  # the flag wins, but not silently into full training
        raise InputError(
            f"--lora-r {values['lora_r']} over --config {path}'s {resolved.lora_asked_by}: that would train every weight, not LoRA; "
            "give --lora-r R of at least 1, or write finetuning_type: full (TRL: use_peft: false) in the file to train every weight"
        )
    key = resolved.key_of("lora_r") or "lora_r"
    raise InputError(
        f"--config {path}: {key} {resolved.written.get(key, values['lora_r'])} (kto-train's --lora-r): {resolved.lora_asked_by} needs a LoRA rank "
        "of at least 1 (peft refuses 0 too); to train every weight, write finetuning_type: full (TRL: use_peft: false)"
    )


def hub_from_the_command_line(ctx: click.Context, path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """The file's push_to_hub: true without hub_model_id needs --push-to-hub ORG/NAME; its
    hub_private_repo: true with the upload off in the file makes a --push-to-hub repo private."""
    pushed = ctx.get_parameter_source("push_to_hub") == ParameterSource.COMMANDLINE
    if resolved.push_needs_repo and not pushed:
        raise InputError(
            f"--config {path}: push_to_hub: true without hub_model_id: transformers would name the repo after output_dir under your "
            "hub account, which kto-train cannot look up offline; give hub_model_id: ORG/NAME (or --push-to-hub ORG/NAME)"
        )
    if resolved.private_if_pushed and pushed and ctx.get_parameter_source("hub_private") != ParameterSource.COMMANDLINE:
        values["hub_private"] = True
        log(f"kto-train: --config {path}: hub_private_repo: true -> --push-to-hub {values['push_to_hub']} is created private")


def eval_follows_log_every(ctx: click.Context, path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """`eval_strategy: steps` without eval_steps evaluates every logging_steps (transformers):
    a --log-every on the command line over the file's logging_steps moves the evaluations too."""
    commandline = lambda name: ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    if not resolved.eval_from_logging or not commandline("log_every") or commandline("eval_every"):
        return
    if values["log_every"] == 0 and values.get("eval_cache") is not None:  # as the file's logging_steps: 0 is refused (config_schedule)
        raise InputError(
            f"--config {path}: eval_strategy: steps without eval_steps evaluates every logging_steps: --log-every 0 leaves no cadence; give --eval-every N (0: after the last step only)"
        )
    values["eval_every"] = values["log_every"]
    resolved.ratios.pop("eval_every", None)
    log(f"kto-train: --config {path}: eval_strategy: steps without eval_steps -> eval_every {values['eval_every']}, from --log-every")


def no_eval_set(ctx: click.Context, path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """transformers evaluates only with an eval set, so a TRL file's eval_steps or eval_strategy
    without one (TRL's own example) is inert there; it is here too, said in a line. Our own
    --eval-every or --eval-each-epoch alone is refused (TrainConfig)."""
    theirs = {"eval_every": "eval_steps", "eval_each_epoch": "eval_strategy"}
    for name, key in theirs.items():
        from_their_file = ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE and (resolved.origin.get(name) == key or name in resolved.ratios)
        if from_their_file and (values.get(name) or name in resolved.ratios):
            log(f"kto-train: --config {path}: {key}: ignored (no eval set: give --eval-cache, val_size, or eval_strategy with dataset_test_split)")
            values[name] = type(values[name])()  # 0 or False
            resolved.ratios.pop(name, None)


# What a run recorded for an option whose key in the file older versions ignored (Resolved.newly_read).
OLDER_VALUES = {"mixed_precision": "auto", "attn_implementation": "sdpa"}


def keep_recorded_defaults(ctx: click.Context, path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """--resume: a value the file left to its tool's defaults takes the run's recorded one. A run
    started before those defaults changed here (warmup, seed, LoRA targets) is then resumed as it
    ran, not refused for settings the file never wrote."""
    from kto.formats.runrecord import read_run_config

    if not values.get("resume") or not (resolved.defaulted or resolved.newly_read):
        return
    try:
        record = read_run_config(values["out"])
    except InputError:
        return  # the resume refuses an unreadable record in its own words
    recorded = (record or {}).get("config", {})
    # A key read since older runs started: bf16/fp16 were ignored, so such a run recorded
    # mixed_precision auto; it resumes as it trained. Any other recorded value is a choice the
    # resume compares (and refuses where it differs).
    before_read = {name for name, was in OLDER_VALUES.items() if name in resolved.newly_read and recorded.get(name) == was}
    for name in sorted(resolved.defaulted | before_read):
        if name in recorded and ctx.get_parameter_source(name) != ParameterSource.COMMANDLINE and recorded[name] != values.get(name):
            if name in before_read:
                why = f"{name}: the run was recorded with {recorded[name]!r}, before {resolved.newly_read[name]} was read: resumed so, not {values.get(name)!r}"
            else:
                why = f"{name} not in the file: the run's own {recorded[name]!r}, not the default {values.get(name)!r}"
            log(f"kto-train: --config {path}: {why}")
            values[name] = recorded[name]


def peft_default_targets(ctx: click.Context, path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """`use_peft: true` without lora_target_modules: TRL passes None, and peft then adapts its
    default modules for the model type (q_proj and v_proj for Llama), not every linear layer (our
    default). Written out as our list, so the run record and a resume name them."""
    if not resolved.peft_default_targets or "lora_target_modules" in resolved.values or values["lora_r"] <= 0:
        return
    if ctx.get_parameter_source("lora_target_modules") == ParameterSource.COMMANDLINE:
        return
    model_type = model_type_of(str(values["model"]), path)
    mapping = peft_target_mapping()
    if mapping is None:
        return  # the run refuses a missing peft first of all (adapters.check_environment)
    if model_type not in mapping:
        raise InputError(
            f"--config {path}: use_peft: true: peft has no default LoRA targets for model type {model_type} (TRL stops there too); "
            "give lora_target_modules (all-linear, or a list of module names)"
        )
    chosen = ",".join(mapping[model_type])
    values["lora_target_modules"] = chosen
    resolved.defaulted.add("lora_target_modules")
    resolved.notes = [note.replace(PEFT_TARGETS, f"{chosen} (peft's default for {model_type})") for note in resolved.notes]


def peft_target_mapping() -> dict[str, list[str]] | None:
    """peft's default LoRA targets per model type (what its LoraConfig(target_modules=None) uses), or
    None without peft (imported with bitsandbytes' import-time warning held back)."""
    from kto.formats.compute.adapters import quiet_bitsandbytes

    try:
        with quiet_bitsandbytes():
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    except ImportError:
        return None
    return TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING


def model_type_of(spec: str, path: Path) -> str:
    """--model's model_type, read before the run loads it: a local config.json, a GGUF file's
    metadata, or a hub repo's config.json alone."""
    from kto.formats.compute.sources import resolve_source

    try:
        if Path(spec).expanduser().exists():
            source = resolve_source(spec)
            where, kwargs = str(source.directory), source.load_kwargs
        else:
            where, kwargs = spec, {}
        config = Path(where) / "config.json"
        if not kwargs and config.is_file():
            return str(json.loads(config.read_text())["model_type"])
        from transformers import PretrainedConfig

        return str(PretrainedConfig.get_config_dict(where, **kwargs)[0]["model_type"])
    except InputError:
        raise
    except Exception as exc:  # unreadable JSON, no model_type, no network: one line
        detail = exception_line(exc)
        raise InputError(f"--config {path}: use_peft: true: cannot read the model type of {spec} ({detail}); give lora_target_modules") from None


def step_shares(ctx: click.Context, path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """transformers 5's `logging_steps: 0.25` (below 1: a share of the total steps) as a step
    count, ⌈share × max_steps⌉ as transformers rounds it. Without max_steps it is refused: the
    total depends on the cache's rows and the processes, known only once the run reads them."""
    said = set()  # eval_every from logging_steps shares its line
    for name, (key, share) in resolved.ratios.items():
        if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            continue
        if values.get("max_steps") is None:
            raise InputError(
                f"--config {path}: {key}: {share}: a share of the total steps (transformers 5), which kto-train knows only once it "
                f"reads the cache; write {key} as a whole number of steps, or give max_steps"
            )
        values[name] = max(1, math.ceil(values["max_steps"] * share))
        if key not in said:
            log(f"kto-train: --config {path}: {key}: {share} -> every {values[name]} steps (⌈max_steps {values['max_steps']} × {share}⌉, as transformers)")
        said.add(key)


def check_cache_agrees(path: Path, resolved: Resolved, values: dict[str, Any]) -> None:
    """kto-precompute's keys in the file (max_length, ..., the data it names and max_samples)
    against the cache's manifest: a file edited after the cache was made, with only kto-train
    rerun, trains on the old rows, which a warning line says (not the note "ignored by
    kto-train" alone)."""
    from kto.formats.cache import open_cache
    from kto.formats.schema import MANIFEST_NAME

    if values.get("cache") is None:
        return  # --eval-only without --cache
    cache = Path(values["cache"])
    if not resolved.other_values or not (cache / MANIFEST_NAME).is_file():
        return  # an `hf:` cache, or none: the run refuses or fetches it
    try:
        manifest = open_cache(cache, stamps=False, hold=False).manifest  # the manifest only: no shard held
    except InputError:
        return  # the run refuses a bad manifest in its own words
    content = manifest.content.to_json()
    differ = precompute_disagreements(resolved.other_values, content) + data_disagreements(resolved.other_values, content, manifest.input_paths())
    if differ:
        # A warning, not a refusal: `kto-precompute --config FILE --max-length 128` (a flag over
        # the file, as documented) makes exactly such a cache, and it is the one meant; so do
        # `--dataset kto_sg` and `--max-samples 20` over the file's dataset and max_samples.
        log(
            f"kto-train: warning: --config {path}: {'; '.join(differ)}: the cache {cache} was made with other values than the file's; "
            f"kto-train trains on the cache as it is (rerun kto-precompute --config {path} --overwrite if the file is what you meant)"
        )


def resume_value(value: Any) -> bool | Path:
    """--resume: absent or false (False), without a path or true (True: the latest checkpoint),
    or a checkpoint directory (its Path). TRL's `resume_from_checkpoint` takes the same."""
    if value is None or value is False or value is True:
        return bool(value)
    return True if value == LATEST else Path(value)


def schedule_kwargs(value: Any) -> dict:
    """--lr-schedule-kwargs: JSON text on the command line, a mapping in a config file."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InputError(f"--lr-schedule-kwargs {value}: not a JSON object")
    return parsed


def config_value(option: click.Option, name: str, value: Any, path: Path) -> Any:
    """A --config value converted and checked as the flag's own type would be on the command line
    (formats' `option_value`, as kto-precompute's), but for kto-train's two values a file may
    write as what they mean: a mapping for lr_schedule_kwargs, true for resume.

    `name` is the key as the file writes it, for the message only: what the value may be is the
    option's (`option.name`), so TRL's `resume_from_checkpoint: true` and `lr_scheduler_kwargs:
    {min_lr_rate: 0.1}` are taken as `resume` and `lr_schedule_kwargs` are."""
    # A key of another tool as the file writes it (logging_steps), ours as its flag (log-every).
    where = f"--config {path}: {name if name != option.name else name.replace('_', '-')}"
    if option.name == "lr_schedule_kwargs" and isinstance(value, dict):
        return value  # a mapping in YAML/TOML is the JSON object itself
    if option.name == "resume" and isinstance(value, bool):
        return value
    return option_value(option, where, value)


if __name__ == "__main__":
    main()
