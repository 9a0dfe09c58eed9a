"""README.md in every `final/` and `final-merged/`: the Hub's model card.

YAML front matter as the Hub reads it (`base_model` only when it is a hub id, `library_name`
peft for an adapter directory, `datasets` for hub datasets), then what produced the weights:
the base model as the user named it, the cache's fingerprint and data sources, β, the class
weights, the learning rate and schedule, the steps, and the final train and eval metrics. Every
value comes from the run record (kto_run.json), the cache's manifest and metrics.jsonl, so the
card says what the files say. `final_files` makes the cards before final/ is saved, and the
policy writes them into final/'s (and final-merged/'s) temp folder beside the weights, so each
folder appears with its card in the same rename: a crash, or an uploader watching for final/,
never meets one without it. By then every metrics line is known and flushed: the last step's
line is logged whatever --log-every, and the last evaluation runs before final/ is saved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from kto.formats.compute.sources import hub_id_shaped, resolve_source
from kto.formats.errors import InputError
from kto.formats.runrecord import MERGED_DIR

from .checkpoint import FinalFiles
from .metrics import last_metrics, metric_values
from .resume_record import began_with

if TYPE_CHECKING:
    from .config import TrainConfig

CARD_NAME = "README.md"
# The card's first sentence: how a run directory tells its own final/ from a folder a user put there.
CARD_MARK = "Trained with kto-offline's kto-train"
MERGED_KIND = "the base model with the LoRA adapters merged in (an ordinary model)"
# Shown first and in this order; TRL's names for the rewards (rewards/chosen …), as metrics.jsonl.
METRIC_ORDER = ("loss", "kl", "sft_loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


def is_hub_id(name: str) -> bool:
    """`org/name` that is no local path: what the Hub accepts as `base_model`."""
    return hub_id_shaped(name) and not Path(name).exists()


def front_matter(base: str, adapter: bool, inputs: list[dict]) -> dict:
    meta: dict = {}
    if is_hub_id(base):
        meta["base_model"] = base
    meta["library_name"] = "peft" if adapter else "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["kto", "kto-offline", *(["lora"] if adapter else [])]
    datasets = sorted({i["dataset"] for i in inputs if i.get("dataset")})
    if datasets:
        meta["datasets"] = datasets
    return meta


def source_line(identity: dict) -> str:
    """One data source of the manifest: a hub dataset by id, split and revision; a file by sha256."""
    if identity.get("dataset"):
        split = ":".join(str(identity[k]) for k in ("config", "split") if identity.get(k))
        return f"hub dataset `{identity['dataset']}` ({split}, revision `{identity.get('revision')}`)"
    return f"`{identity.get('name')}` (sha256 `{str(identity.get('sha256', '?'))[:16]}…`)"


def number(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.6g}"
    return "n/a" if value is None else str(value)


def metrics_table(train: dict, evaluation: dict | None) -> list[str]:
    names = [k for k in METRIC_ORDER if k in train or (evaluation and k in evaluation)]
    lines = ["| metric | train (last logged step) | eval |", "|---|---|---|"]
    for name in names:
        lines.append(f"| {name} | {number(train.get(name))} | {number((evaluation or {}).get(name))} |")
    return lines if names else ["No metrics were logged (`--log-every 0`)."]


def settings_table(
    config: dict, derived: dict, fingerprint: str, inputs: list[dict], kind: str, warmup: int, merged: bool = False, versions: dict | None = None
) -> list[str]:
    """The card's settings table; `warmup`: the warmup steps the run took; `merged`: the folder is
    final-merged/ (for the quantization row)."""
    quantization = quantization_line(config, merged)
    rows = [
        ("base model", f"`{config['model']}`"),
        ("weights in this folder", kind),
        *([("base weights during training", quantization)] if quantization else []),
        ("loss function", config["loss"]),
        ("β", number(config["beta"])),
        ("desirable weight w_D", number(config["desirable_weight"])),
        ("undesirable weight w_U", number(config["undesirable_weight"])),
        ("SFT weight γ", number(config["sft_weight"])),
        ("learning rate", learning_rate_line(config, warmup, derived["total_steps"])),
        ("steps", f"{derived['total_steps']} (batch {config['batch_size']} × accumulation {config['grad_accum']} × {derived['world_size']} processes)"),
        ("seed", number(config["seed"])),
        ("cache fingerprint", f"`{fingerprint}`"),
        ("eval cache fingerprint", f"`{derived['eval_cache_fingerprint']}`" if derived.get("eval_cache_fingerprint") else "none"),
        ("data", "; ".join(source_line(i) for i in inputs) or "n/a"),
        *([("trained with", ", ".join(f"{name} {v}" for name, v in versions.items()))] if versions else []),
    ]
    return ["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def quantization_line(config: dict, merged: bool) -> str | None:
    """How the base weights were held while training (QLoRA), or None when unquantized. Said on
    the card because its final metrics were measured with that base, while the folder's adapters
    load on (final-merged/: are merged into) the unquantized --model, which scores otherwise."""
    if config.get("load_in_4bit"):
        held = "4-bit NF4 (bitsandbytes)"
    elif config.get("load_in_8bit"):
        held = "8-bit (bitsandbytes LLM.int8)"
    else:
        return None
    return f"{held}; the adapters " + ("are merged into" if merged else "load on") + " the unquantized base"


def metrics_section(config: dict, merged: bool) -> list[str]:
    """The heading of the final metrics and, for a QLoRA run, the line that says they were
    measured with the quantized base (the run's evaluations), while the folder's weights load on
    (final-merged/: are merged into) the unquantized --model and score otherwise, with the command
    that measures those. `kto-train --eval-only` takes a run's --load-in-4bit/8bit for its
    adapter folders (final/: the card's numbers again), never for final-merged/."""
    if config.get("load_in_4bit"):
        bits, held = "4-bit NF4", "4-bit NF4 (bitsandbytes)"
    elif config.get("load_in_8bit"):
        bits, held = "8-bit", "8-bit (bitsandbytes LLM.int8)"
    else:
        return ["## Final metrics", ""]
    heading = f"## Final metrics (measured during training on the {bits} base, not on the weights saved here)"
    measure = lambda model, extra="": f"`kto-train --eval-only --model {model} --eval-cache {config.get('eval_cache') or 'EVAL_CACHE'}{extra}`"
    said = f"Measured while training, with the base weights held in {held}"
    if merged:
        line = f"{said}; this folder holds the adapters merged into the unquantized base, which scores otherwise: {measure('<this folder>')} measures it."
    else:
        again = (
            f"{said}, as {measure('<this folder>')} measures them again; these adapters on the unquantized base (as peft loads this folder) score otherwise: "
        )
        key = "load_in_4bit" if config.get("load_in_4bit") else "load_in_8bit"
        if config.get("merge_adapters"):
            line = f"{again}{measure(f'<this folder>/../{MERGED_DIR}')} measures them merged into it."
        else:
            line = f"{again}{measure('<this folder>', ' --config F')}, F a YAML file holding `{key}: false`, measures them."
    return [heading, "", line, ""]


def learning_rate_line(config: dict, warmup: int, total_steps: int) -> str:
    """lr, schedule (with its kwargs) and the warmup that ran: `warmup` steps, the number the
    run's scheduler was given (optim.warmup_steps of its `total_steps`), with where it came from:
    --warmup-steps when given (it overrides the ratio, as in transformers), else the ratio, which
    rounds down (0.1 of 9 steps: none). transformers' constant schedule takes no warmup."""
    kwargs = config.get("lr_schedule_kwargs") or {}
    schedule = config["lr_schedule"] + (f" {json.dumps(kwargs, sort_keys=True)}" if kwargs else "")
    steps = f"{warmup} warmup step{'' if warmup == 1 else 's'}"
    if config["lr_schedule"] == "constant":
        said = "no warmup (transformers' constant takes none)"
    elif config.get("warmup_steps"):
        said = f"{steps} (warmup_steps {config['warmup_steps']}{_warmup_outlasted(config, warmup, total_steps)})"
    else:
        said = f"{steps} (warmup ratio {number(config['warmup_ratio'])} of {total_steps} steps)"
    return f"{number(config['lr'])} ({schedule}, {said})"


def _warmup_outlasted(config: dict, warmup: int, total_steps: int) -> str:
    """`; more than the run's 3 steps, so the rate never reached 0.001` where --warmup-steps
    outlasted the run, as the run's warning said (the rule of both: optim.reaches_lr); else ''."""
    from .optim import reaches_lr

    if reaches_lr(config["lr_schedule"], warmup, total_steps):
        return ""
    than = "more than" if warmup > total_steps else "as many as"
    return f"; {than} the run's {total_steps} steps, so the rate never reached {number(config['lr'])}"


def load_line(config: dict, adapter: bool) -> str:
    """How to load the folder, in code that runs as written once `<this folder>` is replaced. An
    adapter on a GGUF base: adapter_config.json names the GGUF file's folder (ModelSource.peft_base),
    and peft passes `gguf_file` on to the base's from_pretrained; the folder alone is no model."""
    if not adapter:
        return '`transformers.AutoModelForCausalLM.from_pretrained("<this folder>")`'
    gguf = gguf_base(config["model"])
    extra = f', gguf_file="{gguf}"' if gguf else ""
    base = f"the GGUF file `{config['model']}`, dequantized on load" if gguf else f"`{config['model']}`"
    line = f'`peft.AutoPeftModelForCausalLM.from_pretrained("<this folder>"{extra})` (the base is {base})'
    if config.get("merge_adapters"):
        # Said so that it is true on the Hub too, where --push-to-hub put final/ alone.
        line += f"; the run directory that holds this folder also holds {MERGED_DIR}/, the same model merged, which loads without peft (kto-train's --push-to-hub uploads this folder alone)"
    return line


def gguf_base(model: str) -> str | None:
    """The GGUF file name of --model `model` when it is a local GGUF file (or a folder of one), else None."""
    if not Path(model).expanduser().exists():
        return None  # a hub id: resolving it would ask the Hub
    try:
        return resolve_source(model).gguf_file
    except InputError:  # moved or changed since the run loaded it: the card says what it can
        return Path(model).name if Path(model).suffix == ".gguf" else None


def model_card(record: dict, inputs: list[dict], train: dict, evaluation: dict | None, kind: str, adapter: bool, warmup: int, merged: bool = False) -> str:
    """The card's text. `record`: kto_run.json; `inputs`: the cache manifest's content.inputs;
    `train`/`evaluation`: the last metrics.jsonl lines; `kind`: what the folder holds, in words;
    `warmup`: the warmup steps the run's scheduler took; `merged`: the folder is final-merged/."""
    config, derived = record["config"], record["derived"]
    meta = yaml.safe_dump(front_matter(config["model"], adapter, inputs), sort_keys=False, allow_unicode=True)
    load = load_line(config, adapter)
    body = [
        f"# {config['model']} + KTO",
        "",
        f"{CARD_MARK}: KTO (Ethayarajh et al., 2024) from reference log-probs precomputed once by kto-precompute. Load with {load}.",
        "",
        "## Training",
        "",
        *settings_table(config, derived, derived["cache_fingerprint"], inputs, kind, warmup, merged, began_with(record)),
        "",
        *metrics_section(config, merged),
        *metrics_table(train, evaluation),
        "",
    ]
    return f"---\n{meta}---\n\n" + "\n".join(body)


def final_files(cfg: TrainConfig, inputs: list[dict], adapter: bool) -> FinalFiles:
    """The README.md of final/ and, with --merge-adapters, of final-merged/. `inputs`: the cache
    manifest's content.inputs; `adapter`: final/ holds LoRA adapters. Main process (it reads
    kto_run.json and metrics.jsonl, which it wrote)."""
    from kto.formats.runrecord import read_run_config

    from .optim import warmup_steps

    record = read_run_config(cfg.out)
    warmup = warmup_steps(cfg, record["derived"]["total_steps"])  # what the run's scheduler was given (optim.build_scheduler)
    train_line, eval_line = last_metrics(cfg.out)
    train, evaluation = metric_values(train_line), (metric_values(eval_line) if eval_line else None)
    kind = f"LoRA adapters (r {cfg.lora_r}, alpha {cfg.lora_alpha:g})" if adapter else "every weight (full fine-tune)"
    final = {CARD_NAME: model_card(record, inputs, train, evaluation, kind, adapter, warmup)}
    merged = {CARD_NAME: model_card(record, inputs, train, evaluation, MERGED_KIND, False, warmup, merged=True)} if cfg.merge_adapters else {}
    return FinalFiles(final, merged)
