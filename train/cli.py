"""`kto-train`: train only the policy, streaming cached reference log-probs into the KTO loss.

Every option mirrors a TrainConfig field (tests/train/test_data.py,
`test_cli_options_mirror_config_fields`, keeps them in step). Values come from defaults, then
`--config FILE`, then flags actually given on the command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kto.formats.compute.early_checks import check_local_cache, check_local_model
from kto.formats.config_names import TRAIN, names_other_tools_use
from kto.formats.errors import InputError, log, one_line_errors

from .config import DTYPES, KL_SCOPES, MIXED_PRECISION, SCHEDULES, TrainConfig, load_config_file
from .loss_type import LossType
from .stop import Interrupted

P = click.Path(path_type=Path)
LATEST = "latest"  # `--resume` without a path


@click.command(cls=names_other_tools_use(TRAIN), context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--cache", type=P, help="Cache directory written by kto-precompute.")
@click.option("--model", help="Policy initialisation: local HF dir, .gguf file or hub id.")
@click.option("--out", type=P, help="Run directory.")
@click.option("--config", "config_file", type=P, default=None, help="YAML or TOML file of flag values.")
@click.option("--beta", default=0.1)
@click.option("--desirable-weight", default=1.0)
@click.option("--undesirable-weight", default=1.0)
@click.option("--auto-weights", is_flag=True, help="Set w_D so (w_D·n_D)/(w_U·n_U) ∈ [1, 4/3].")
@click.option("--loss", default="kto", type=click.Choice([t.value for t in LossType]))
@click.option("--sft-weight", default=0.0, help="γ · mean NLL of desirable completion tokens.")
@click.option("--lr", default=1e-6)
@click.option("--lr-schedule", default="linear", type=click.Choice(SCHEDULES), help="transformers' get_scheduler kinds.")
@click.option("--lr-schedule-kwargs", default=None, help="JSON object for get_scheduler, e.g. '{\"min_lr_rate\": 0.1}'.")
@click.option("--warmup-ratio", default=0.1, help="Rounded down; --warmup-steps wins when set.")
@click.option("--warmup-steps", default=0)
@click.option("--weight-decay", default=0.0)
@click.option("--max-grad-norm", default=1.0, help="0 disables clipping.")
@click.option("--batch-size", default=8, help="Per process.")
@click.option("--grad-accum", default=1)
@click.option("--epochs", default=1.0, help="May be fractional: ⌈epochs × steps per epoch⌉ steps.")
@click.option("--max-steps", default=None, type=int)
@click.option("--seed", default=0)
@click.option("--kl-scope", default="step", type=click.Choice(KL_SCOPES))
@click.option("--mixed-precision", default="auto", type=click.Choice(MIXED_PRECISION))
@click.option("--dtype", default="fp32", type=click.Choice(DTYPES), help="Weight dtype.")
@click.option("--gradient-checkpointing", is_flag=True)
@click.option("--prefix-sharing/--no-prefix-sharing", default=True, help="Run a prompt shared by rows of a step once (same numbers, less compute).")
@click.option("--keep-dropout", is_flag=True, help="Keep the model's dropout (disabled by default).")
@click.option("--log-every", default=10)
@click.option("--save-every", default=0, help="0: final model only.")
@click.option("--save-total-limit", default=0, help="Keep only the newest N checkpoints (0: keep all).")
@click.option("--eval-cache", type=P, default=None)
@click.option("--eval-every", default=0)
@click.option(
    "--resume", is_flag=False, flag_value=LATEST, default=None, metavar="[CHECKPOINT]", help="Continue from OUT/checkpoint-STEP [default: the latest]."
)
@click.option("--report-to", default="none", help="none, all, or a comma list of tensorboard, wandb, mlflow, ... (see README).")
@click.option("--run-name", default=None, help="The run's name in the trackers [default: the name of --out].")
@click.option("--drift-tolerance", default=None, type=float, help="Step-0 per-token |Δ| allowed.")
@click.option("--chunk-size", default=1024)
@click.option("--trust-remote-code", is_flag=True)
@click.option("--attn-implementation", default="sdpa")
@click.option("--lora-r", default=0, help="LoRA rank; 0 trains every weight.")
@click.option("--lora-alpha", default=16.0)
@click.option("--lora-dropout", default=0.0)
@click.option("--lora-target-modules", default=None, help="Comma list [default: every decoder linear layer].")
@click.option("--load-in-4bit", is_flag=True, help="QLoRA: 4-bit NF4 base weights (bitsandbytes).")
@click.option("--load-in-8bit", is_flag=True, help="8-bit base weights (bitsandbytes).")
@click.option("--merge-adapters", is_flag=True, help="Also write OUT/final-merged (base + adapters).")
@click.option("--fsdp", is_flag=True, help="FSDP2 sharding (as accelerate launch --use_fsdp).")
@click.version_option(package_name="kto-offline", prog_name="kto-train")
@click.option("--push-to-hub", default=None, help="Upload final/ to this hub model repo (ORG/NAME) at the end.")
@click.option("--hub-private", is_flag=True, help="Create the --push-to-hub repo private.")
@click.pass_context
@one_line_errors("kto-train")
def main(ctx: click.Context, config_file: Path | None, **flags: Any) -> None:
    """Train the policy from a kto-precompute cache; no reference model is loaded."""
    from .api import run  # the Python API: this command is flags → TrainConfig → run()
    from .processes import end_own_process_group, process_group_exists

    cfg = config_from(ctx, config_file, flags)
    check_paths(cfg)
    existed = process_group_exists()  # after check_paths: it imports torch
    try:
        run(cfg)
    except Interrupted as exc:  # a signal stopped the run at a step boundary, its checkpoint and --resume already printed
        end_own_process_group(existed)
        sys.exit(exc.exit_code)
    end_own_process_group(existed)  # the API keeps a group it made for the next call; the command ends here


def check_paths(cfg: TrainConfig) -> None:
    """The start-up checks of --cache, --model and --eval-cache that need neither torch nor
    transformers, in train/setup.py check_inputs' order, made before the run imports them: a
    typo is refused in a second instead of after those imports. Writes nothing.

    With adapters (--lora-r > 0, adapters.enabled) check_inputs refuses a missing peft or
    bitsandbytes first of all, before the cache is read; that check imports them (and torch),
    so these are left to the run then, to keep that order."""
    if cfg.lora_r > 0:
        return
    check_local_cache(cfg.cache)
    check_local_model(cfg.model)
    if cfg.eval_cache is not None:
        check_local_cache(cfg.eval_cache)


def config_from(ctx: click.Context, config_file: Path | None, flags: dict[str, Any]) -> TrainConfig:
    """Defaults < --config FILE < command-line flags, then one TrainConfig."""
    options = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    values: dict[str, Any] = {}
    eval_in_cache = False
    if config_file:
        resolved = load_config_file(config_file)
        for note in resolved.notes:
            log(f"kto-train: {note}")
        # Errors name the key as the file spells it (torch_dtype, not dtype).
        values = {k: config_value(options[k], resolved.origin.get(k, k), v, config_file) for k, v in resolved.values.items()}
        eval_in_cache = resolved.eval_in_cache
    for name, value in flags.items():
        given = ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
        if given or name not in values:
            values[name] = value
    if config_file and resolved.alpha_twice_rank and ctx.get_parameter_source("lora_r") == ParameterSource.COMMANDLINE:
        if ctx.get_parameter_source("lora_alpha") != ParameterSource.COMMANDLINE:
            values["lora_alpha"] = 2.0 * values["lora_r"]  # LLaMA-Factory's 2 × rank, of the rank in force
    values["resume"] = resume_value(values["resume"])
    values["lr_schedule_kwargs"] = schedule_kwargs(values["lr_schedule_kwargs"])
    if values.get("out") is None and isinstance(values["resume"], Path):
        values["out"] = values["resume"].parent  # `--resume RUN/checkpoint-STEP` names its run
    for name in ("cache", "model", "out"):
        if values.get(name) is None:
            raise InputError(f"--{name} is required (on the command line or in --config)")
    if eval_in_cache and values.get("eval_cache") is None:
        # LLaMA-Factory's val_size held rows out; kto-precompute wrote them to CACHE/eval.
        values["eval_cache"] = Path(values["cache"]) / "eval"
        log(f"kto-train: --config {config_file}: val_size -> --eval-cache {values['eval_cache']}")
    from_their_file = (
        config_file and resolved.origin.get("eval_every") == "eval_steps" and ctx.get_parameter_source("eval_every") != ParameterSource.COMMANDLINE
    )
    if from_their_file and values.get("eval_every") and values.get("eval_cache") is None:
        # transformers evaluates only with an eval set, so a TRL file's eval_steps without one
        # (TRL's own example) is inert there; it is here too. Our --eval-every alone is refused.
        log(f"kto-train: --config {config_file}: eval_steps: ignored (no eval set: give --eval-cache, or val_size)")
        values["eval_every"] = 0
    return TrainConfig(**values)


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
    """A --config value converted and checked as the flag's own type would be on the command line.

    YAML reads `lr: 1e-6` as a string (YAML 1.1 wants `1.0e-6` for a float), so strings are
    converted like command-line text; but a true/false is never taken for a number, nor 2.5 for
    a whole number, as Python's int() and float() would."""
    where = f"--config {path}: {name.replace('_', '-')}"
    if name == "lr_schedule_kwargs" and isinstance(value, dict):
        return value  # a mapping in YAML/TOML is the JSON object itself
    if name == "resume" and isinstance(value, bool):
        return value
    kind = option.type
    if value is None:
        if option.default is None and not option.is_flag:
            return None
        raise InputError(f"{where}: is empty; give a value or leave the key out")
    if isinstance(value, (dict, list)):
        raise InputError(f"{where}: expected one {kind.name} value, got a {'mapping' if isinstance(value, dict) else 'list'}")
    if isinstance(kind, click.types.BoolParamType):
        if isinstance(value, bool):
            return value
        if not isinstance(value, str):
            raise InputError(f"{where}: {value!r} is not true or false")
    elif isinstance(value, bool):
        raise InputError(f"{where}: {value} is true/false; expected {kind.name}")
    elif isinstance(kind, click.types.IntParamType) and isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"{where}: {value!r} is not a whole number")
        value = int(value)
    elif isinstance(kind, (click.Choice, click.Path, click.types.StringParamType)):
        value = str(value)
    try:
        return kind.convert(value, option, None)
    except click.BadParameter as exc:
        raise InputError(f"{where}: {exc.message}") from None


if __name__ == "__main__":
    main()
