"""transformers' eval_strategy and save_strategy as kto-train's schedule: when a TRL or
LLaMA-Factory file evaluates and saves, read with the keys they pick between (eval_steps,
logging_steps, save_steps, val_size). Each says what it did in one line of the file's notes.

kto-train evaluates every eval_every steps, after each epoch with eval_each_epoch, and once
after the last step, whenever it has an eval cache; it saves every save_every steps and after
each epoch with save_each_epoch, and final/ at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config_keys import EVAL_STRATEGIES, file_switch, same_value
from .config_resolved import Resolved
from .errors import InputError

# kto-train's log_every default, which TRL's KTOConfig shares (logging_steps 10).
LOG_EVERY = 10


def _strategy(raw: Mapping[str, Any], keys: tuple[str, ...], allowed: tuple[str, ...]) -> str | None:
    """The value of the first of `keys` the file gives, lower case; None where it gives none."""
    key = next((k for k in keys if k in raw), None)
    if key is None:
        return None
    # YAML 1.1 reads an unquoted `no` as false; null is transformers' "not set", i.e. no.
    strategy = "no" if raw[key] is None or raw[key] is False else str(raw[key]).lower()
    if strategy not in allowed:
        raise InputError(f"{key}: {raw[key]!r}: transformers takes {', '.join(allowed[:-1])} or {allowed[-1]}")
    return strategy


def eval_strategy(raw: Mapping[str, Any]) -> str | None:
    """transformers' eval_strategy (or its old name evaluation_strategy): no, steps or epoch;
    None where the file gives neither."""
    return _strategy(raw, EVAL_STRATEGIES, ("no", "steps", "epoch"))


def save_strategy(raw: Mapping[str, Any]) -> str | None:
    """transformers' save_strategy: no, steps or epoch (`best` is refused: checkpoints here are
    kept by step, not by an eval metric); None where the file leaves it out (steps)."""
    strategy = _strategy(raw, ("save_strategy",), ("no", "steps", "epoch", "best"))
    if strategy == "best":
        raise InputError("save_strategy: best: kto-train keeps checkpoints by step, not by an eval metric; give steps (with save_steps) or epoch")
    return strategy


def evaluates(raw: Mapping[str, Any]) -> str | None:
    """The eval_strategy when it is given and not `no`."""
    strategy = eval_strategy(raw)
    return None if strategy in (None, "no") else strategy


def eval_schedule(raw: Mapping[str, Any], out: Resolved) -> None:
    """transformers' eval_strategy as kto-train's schedule. kto-train has no switch to skip the
    evaluation after the last step.

    - steps: every eval_steps, or logging_steps where eval_steps is left out, null or 0
      (TrainingArguments.__post_init__; logging_steps' default is 500 for LLaMA-Factory, 10 in
      TRL's KTOConfig); below 1, a share of max_steps, as for the keys themselves;
    - epoch: eval_each_epoch, after each epoch (eval_steps ignored, as transformers ignores it);
    - no: eval_steps ignored and no eval cache from the file (val_size's CACHE/eval, TRL's
      dataset_test_split), unless do_eval: true with val_size (LLaMA-Factory evaluates after
      training then); an --eval-cache on the command line is still evaluated after the last step;
    - left out: eval_steps is eval_every, and val_size's CACHE/eval the eval cache, as before
      the key was read (transformers would not evaluate; a file without it meant to here).
    Called after the defaults of the file's tool: logging_steps' default is theirs."""
    strategy = eval_strategy(raw)
    if out.values.get("eval_only") and raw.get("do_eval") is False:
        raise InputError("do_train: false with do_eval: false: nothing to do (kto-train would neither train nor evaluate); drop do_train: false to train")
    held_out = bool(raw.get("val_size")) and (strategy != "no" or raw.get("do_eval") is True or bool(out.values.get("eval_only")))
    out.eval_in_cache = held_out or ("dataset_name" in raw and strategy not in (None, "no"))
    if strategy == "steps":
        _eval_on_logged_steps(out)
    elif strategy is not None:
        dropped = "; eval_steps: ignored, as transformers ignores it then" if _drop_steps("eval_every", "eval_steps", out) else ""
        if strategy == "epoch":
            out.set("eval_each_epoch", True, "eval_strategy")
            said = "eval_each_epoch: evaluated after each epoch (and after the last step)"
        elif out.eval_in_cache:
            said = "do_eval: true: evaluated once after the last step, on CACHE/eval (val_size), as LLaMA-Factory evaluates after training"
        else:
            said = "no evaluation from the file (no eval cache from val_size or dataset_test_split); an --eval-cache given on the command line is still evaluated once after the last step (kto-train has no switch to skip it)"
        out.notes.append(f"eval_strategy: {strategy} -> {said}{dropped}")


def save_schedule(raw: Mapping[str, Any], out: Resolved) -> None:
    """transformers' save_strategy: steps (or left out) saves every save_steps; epoch after each
    epoch and no saves no checkpoint, both ignoring save_steps as transformers does. final/ is
    written at the end whatever the strategy."""
    strategy = save_strategy(raw)
    if strategy in (None, "steps"):
        return
    dropped = "; save_steps: ignored, as transformers ignores it then" if _drop_steps("save_every", "save_steps", out) else ""
    if strategy == "epoch":
        out.set("save_each_epoch", True, "save_strategy")
        said = "save_each_epoch: a checkpoint after each epoch"
    else:
        said = "no checkpoints, final/ only"
    out.notes.append(f"save_strategy: {strategy} -> {said}{dropped}")


def _drop_steps(ours: str, key: str, out: Resolved) -> bool:
    """Take back the `ours` that the file's `key` set (a count or a share); True if there was one."""
    dropped = out.origin.get(ours) == key
    if dropped:
        del out.values[ours], out.origin[ours]
    if out.ratios.get(ours, ("",))[0] == key:
        dropped = bool(out.ratios.pop(ours))
    return dropped


def _eval_on_logged_steps(out: Resolved) -> None:
    """eval_strategy: steps without eval_steps (or with 0): every logging_steps, transformers' rule."""
    if "eval_every" in out.ratios or out.values.get("eval_every") or out.origin.get("eval_every") == "eval_every":
        return  # eval_steps given, or our own eval_every
    _drop_steps("eval_every", "eval_steps", out)  # eval_steps: 0
    if "log_every" in out.ratios:
        out.ratios["eval_every"] = out.ratios["log_every"]  # resolved against max_steps by kto-train
        key, every = out.ratios["log_every"]
    else:
        key = "logging_steps" if "log_every" in out.values else "logging_steps' default"
        every = out.values.get("log_every", out.defaults.get("log_every", LOG_EVERY))
        if same_value(every, 0):
            raise InputError("eval_strategy: steps: give eval_steps, or a logging_steps above 0 (transformers refuses it too)")
        # Set as eval_steps: kto-train then drops it, said in a line, where there is no eval set
        # (train/cli.py from_config_file), as it drops a written eval_steps.
        out.set("eval_every", every, "eval_steps")
    out.eval_from_logging = True
    out.notes.append(f"eval_strategy: steps without eval_steps -> eval_every from {key} {every} (eval_steps defaults to logging_steps, as transformers)")


def do_train(value: Any, out: Resolved, llama_factory: bool) -> None:
    """LLaMA-Factory's do_train: false (with do_eval: true: evaluate without training) is
    kto-train's eval_only: --model is evaluated on the eval set (eval_cache, val_size's
    CACHE/eval) and OUT/eval_results.json written. Not in TRL's names: transformers' field
    defaults to false, so a dumped TrainingArguments holds do_train: false for a training run,
    and TRL's scripts train whatever it says. true: training, what kto-train does anyway."""
    if file_switch("do_train", value) or not llama_factory:
        out.notes.append("do_train: ignored (training is what kto-train does; LLaMA-Factory's do_train: false is --eval-only)")
        return
    out.set("eval_only", True, "do_train")
    out.notes.append("do_train: false -> eval_only: --model is evaluated on the eval set, nothing is trained")
