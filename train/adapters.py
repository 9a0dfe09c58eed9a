"""LoRA and QLoRA adapters through peft (the optional extra `lora` = peft + bitsandbytes).

The cache's reference is the base model (`--model`). The policy is that base plus adapters whose
B matrices start at zero (peft's default init), so at step 0 the policy *is* the reference and
the step-0 check still applies: on CPU in fp32 it reports fp32 rounding only. Only the adapter
parameters require grad, so `build_optimizer` (which takes `requires_grad` parameters) holds only
them, and `PeftModel.save_pretrained` writes only them: checkpoints and `final/` are PEFT adapter
directories, loaded back with `peft.PeftModel.from_pretrained(base, dir)`.

QLoRA (`--load-in-4bit` / `--load-in-8bit`) quantizes the base with bitsandbytes. The cache was
scored with the unquantized base, so at step 0 the quantized policy differs from it by the
quantization error: the step-0 check then reports that drift instead of stopping (unless
`--drift-tolerance` is given), and the rewards are measured against the unquantized reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kto.formats.compute.adapters import adapter_config, is_adapter_dir, peft_quietly, quiet_bitsandbytes, require_peft, with_adapters
from kto.formats.compute.numerics import train_numerics
from kto.formats.errors import InputError, exception_line, log

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, PreTrainedTokenizerBase

    from .config import TrainConfig


def enabled(cfg: TrainConfig) -> bool:
    return cfg.lora_r > 0


def quantized(cfg: TrainConfig) -> bool:
    return cfg.load_in_4bit or cfg.load_in_8bit


def bitsandbytes_backend(device_type: str, bits: int = 4) -> str | None:
    """Why bitsandbytes cannot quantize to `bits` (4: NF4, 8: int8) on `device_type`, or None when it can.

    bitsandbytes ≥ 0.46 registers its kernels per device type as torch ops (CUDA, and CPU since
    0.46/0.47); older releases are CUDA-only. We ask it to quantize a small tensor on the device:
    that is the one test that does not depend on how a given release lays out its backends.
    """
    try:
        with quiet_bitsandbytes():  # its import-time note on an optional kernel package (peft_quietly)
            import bitsandbytes
            import bitsandbytes.functional as F
    except ImportError:
        return "bitsandbytes is not installed (pip install 'kto-offline[lora]')"
    except Exception as exc:  # a broken native library raises RuntimeError/OSError on import
        return f"bitsandbytes does not load ({exception_line(exc)})"
    probe = (lambda F, t: F.quantize_4bit(t)) if bits == 4 else (lambda F, t: F.int8_vectorwise_quant(t))
    try:
        # float16: the one dtype every backend takes. CUDA's int8_vectorwise_quant raises
        # ValueError for anything else (0.50.2, backends/cuda/ops.py), which a float32 probe read
        # as "no cuda backend"; CPU's kernels take any dtype, so only a GPU showed it.
        probe(F, torch.ones(64, 64, device=device_type, dtype=torch.float16))
    except Exception as exc:
        return f"bitsandbytes {bitsandbytes.__version__} has no {device_type} backend ({type(exc).__name__})"
    return None


def quantization_config(cfg: TrainConfig, device_type: str, autocast: str = "no") -> BitsAndBytesConfig | None:
    """A transformers BitsAndBytesConfig for --load-in-4bit/8bit, or None. Refuses (one line) when
    bitsandbytes has no backend for this device. `autocast` is the run's resolved mixed
    precision (accelerate's "no", "bf16" or "fp16"): 4-bit layers compute in it."""
    if not quantized(cfg):
        return None
    flag = "--load-in-4bit" if cfg.load_in_4bit else "--load-in-8bit"
    why = bitsandbytes_backend(device_type, 4 if cfg.load_in_4bit else 8)
    if why:
        raise InputError(f"{flag}: {why}")
    from transformers import BitsAndBytesConfig

    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    # NF4 with double quantization and the compute in the training dtype: QLoRA's recipe. The
    # dtype the rest of the run computes in, not a fixed bfloat16, which put fp16 runs (GPUs
    # without bf16, such as the T4) and fp32 runs (--mixed-precision no) through bf16 matmuls.
    compute = train_numerics(cfg.dtype, autocast).compute
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


def decoder_prefix(lm: torch.nn.Module) -> str:
    """The full name of `lm.get_decoder()` in `lm` (`model.language_model` for Gemma 3's
    multimodal model, `model` for Llama), or "" when the decoder is `lm` itself."""
    decoder = lm.get_decoder()
    return next(name for name, module in lm.named_modules() if module is decoder)


def linear_modules(lm: torch.nn.Module) -> list[str]:
    """Full names (in `lm`, as peft sees them) of the decoder's linear layers that LoRA can wrap
    (`_wrappable`), never the LM head."""
    return [n for n, m in _decoder_linears(lm) if _wrappable(m)]


def _decoder_linears(lm: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from transformers.pytorch_utils import Conv1D

    head, prefix = lm.get_output_embeddings(), decoder_prefix(lm)
    return [(n, m) for n, m in lm.get_decoder().named_modules(prefix=prefix) if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]


def _wrappable(module: torch.nn.Module) -> bool:
    """nn.Linear, or a subclass whose forward still maps (…, in) to one tensor (…, out), as peft's
    LoRA layer adds its update to what the layer returns: Falcon's FalconLinear, bitsandbytes'
    quantized layers. MoE routers that subclass nn.Linear and return a tuple (PhiMoE's
    PhimoeTopKRouter, Llama 4's Llama4Router) crash inside peft (`'tuple' object has no attribute
    'dtype'`). A subclass is tried once on the meta device: no memory, no random draw; only one
    whose forward runs there and returns no tensor is left out."""
    cls = type(module)
    if not isinstance(module, torch.nn.Linear) or cls.forward is torch.nn.Linear.forward or cls.__module__.startswith("bitsandbytes"):
        return True  # nn.Linear's own forward, bitsandbytes' quantized ones, or GPT-2's Conv1D
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    meta = {name: torch.empty_like(t, device="meta") for name, t in state.items()}
    x = torch.empty(2, module.in_features, device="meta", dtype=module.weight.dtype)
    try:
        with torch.no_grad():
            out = torch.func.functional_call(module, meta, (x,))
    except Exception:  # a probe that cannot run here (an FP8 kernel, a device) tells nothing: wrapped, as before
        return True
    return isinstance(out, torch.Tensor)


def linear_names(lm: torch.nn.Module) -> list[str]:
    """Leaf names of those layers: the default LoRA targets (q_proj, …, down_proj for Llama)."""
    return sorted({n.rsplit(".", 1)[-1] for n in linear_modules(lm)})


def _matches(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of targets: a module whose full name equals one or ends with "." + one."""
    return any(name == t or name.endswith("." + t) for t in targets)


def target_modules(cfg: TrainConfig, lm: torch.nn.Module) -> list[str]:
    available = linear_names(lm)
    if not cfg.lora_target_modules:
        if not available:
            raise InputError(f"--lora-r {cfg.lora_r}: --model {cfg.model} has no linear layers in its decoder for LoRA to adapt")
        return available
    flag = f"--lora-target-modules {cfg.lora_target_modules}"
    wanted = cfg.lora_target_modules
    wanted = [w.strip() for w in (wanted.split(",") if isinstance(wanted, str) else wanted) if w.strip()]
    for name, module in _decoder_linears(lm):
        if _matches(name, wanted) and not _wrappable(module):
            raise InputError(
                f"{flag}: {name} is a {type(module).__name__}, an nn.Linear whose forward returns no single tensor "
                "(a MoE router), which LoRA cannot wrap; name the other layers"
            )
    _refuse_head(lm, wanted, flag)
    linear = linear_modules(lm)
    missing = [w for w in wanted if not any(_matches(n, [w]) for n in linear)]
    if missing or not wanted:
        raise InputError(
            f"{flag}: --model {cfg.model} has no linear layer named {', '.join(missing) or '(none given)'} (its decoder has: {', '.join(available) or 'none'})"
        )
    return wanted


def _refuse_head(lm: torch.nn.Module, wanted: list[str], flag: str) -> None:
    """The LM head is not adapted: its log-probs are computed from the head's weight directly, in
    chunks over completion positions only (formats/compute/logprob.py), so a LoRA layer on it would
    never run and train nothing. Named as a target, it is refused as what it is."""
    head = lm.get_output_embeddings()
    name = next((n for n, m in lm.named_modules() if m is head), None) if head is not None else None
    named = [w for w in wanted if name and _matches(name, [w])]
    if named:
        raise InputError(
            f"{flag}: {named[0]} is the model's LM head, which kto-train does not adapt (its log-probs use the head's weight directly, "
            "so an adapter there would never run); name layers of the decoder only"
        )


def exclude_modules(lm: torch.nn.Module, targets: list[str]) -> str | None:
    """peft matches `targets` (leaf names) across the whole model: on a multimodal model the vision
    tower's q_proj too, and a router or other module that shares a name with a decoder layer.
    The modules they match that are not `linear_modules` go to peft's `exclude_modules`, a regex
    that must match a full name whole: anything outside the decoder, `(?!model\\.language_model\\.).*`,
    and the decoder's own by name with their layer numbers as `\\d+`. None when there are none
    (Llama: adapter_config.json as before)."""
    import re

    prefix, linear = decoder_prefix(lm), set(linear_modules(lm))
    stray = [n for n, _ in lm.named_modules() if n and n not in linear and _matches(n, targets)]
    inside = [n for n in stray if not prefix or n.startswith(prefix + ".")]
    patterns = [f"(?!{re.escape(prefix)}\\.).*"] if len(inside) < len(stray) else []
    for name in inside:  # re.escape writes "layers\\.0\\.mlp": each layer number becomes \\d+
        pattern = re.sub(r"(?<=\\\.)\d+(?=\\\.)", r"\\d+", re.escape(name))
        if pattern not in patterns:
            patterns.append(pattern)
    return "|".join(patterns) or None


def check_environment(cfg: TrainConfig, device_type: str) -> None:
    """The adapter preconditions that need neither the cache nor the model, checked first of all
    (check_inputs): peft is installed, and bitsandbytes can quantize on this device. The flags
    themselves were checked with the config (config.check_adapter_flags)."""
    if not enabled(cfg):
        return
    require_peft()
    quantization_config(cfg, device_type)


def check_model(cfg: TrainConfig, skeleton: torch.nn.Module) -> None:
    """Before --out is touched and any weight is read: the LoRA targets exist in --model, built
    from its config on the meta device (formats/compute/meta_device.py model_skeleton)."""
    if enabled(cfg):
        targets = target_modules(cfg, skeleton)
        narrow = narrowest_targets(skeleton, targets)
        if narrow and cfg.lora_r > narrow[1]:
            names, width, shape = narrow
            log(
                f"kto-train: warning: --lora-r {cfg.lora_r} is above the width of {names} ({shape}): a LoRA update there has rank at most "
                f"{width}; a larger rank adds parameters, not rank"
            )


def narrowest_targets(skeleton: torch.nn.Module, targets: list[str]) -> tuple[str, int, str] | None:
    """The leaf names of the targeted layers of least min(in, out), that width, and their
    shape ("32 in, 16 out"); None without any. From the meta skeleton's modules: no weight read."""
    widths: dict[str, tuple[int, str]] = {}
    for name, module in _decoder_linears(skeleton):
        shape = _in_out(module)
        leaf = name.rsplit(".", 1)[-1]
        if shape and _matches(name, targets) and (leaf not in widths or min(shape) < widths[leaf][0]):
            widths[leaf] = (min(shape), f"{shape[0]} in, {shape[1]} out")
    if not widths:
        return None
    least = min(w for w, _ in widths.values())
    names = sorted(n for n, (w, _) in widths.items() if w == least)
    return ", ".join(names), least, widths[names[0]][1]


def _in_out(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) of an nn.Linear, or of transformers' Conv1D (weight [in, out]); None otherwise."""
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    return (int(weight.shape[0]), int(weight.shape[1])) if weight is not None and weight.ndim == 2 else None


def lora_config(cfg: TrainConfig, lm: torch.nn.Module) -> LoraConfig:
    peft = require_peft()
    targets = target_modules(cfg, lm)
    return peft.LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        exclude_modules=exclude_modules(lm, targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def prepare_base(cfg: TrainConfig, lm: torch.nn.Module) -> torch.nn.Module:
    """Before adapters go on: freeze and (QLoRA) prepare the quantized base; make checkpointed
    segments see inputs that require grad."""
    if quantized(cfg):
        from peft import prepare_model_for_kbit_training

        # use_gradient_checkpointing=False: load_policy already turned it on, non-reentrant.
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing:
        # The enable_input_require_grads trap: with the embeddings frozen, the hidden states that
        # enter layer 0 do not require grad. Reentrant checkpointing (transformers' default, and
        # what other code may turn on) then returns outputs without grad, and the adapters inside
        # the checkpointed layers silently get none. Our non-reentrant checkpointing does not need
        # this, and transformers 5 / peft add the hook themselves in the usual order; it costs one
        # tiny hook and keeps any kind and order correct.
        lm.enable_input_require_grads()
    return lm


def add_adapters(cfg: TrainConfig, lm: torch.nn.Module) -> torch.nn.Module:
    """Fresh adapters (B = 0) on the base: the policy starts equal to the reference.

    The A matrices are drawn from --seed alone (not from whatever the global generator went
    through before): every process must draw the same ones, because FSDP shards each process's
    own copy without broadcasting it first."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]), peft_quietly():
        torch.manual_seed(cfg.seed)
        return get_peft_model(prepare_base(cfg, lm), lora_config(cfg, lm))


def load_adapters(cfg: TrainConfig, lm: torch.nn.Module, checkpoint: Path) -> torch.nn.Module:
    """Adapters saved in `checkpoint` on the base, trainable. Their settings must be the flags'."""
    from peft import PeftModel

    check_adapter_settings(cfg, lm, checkpoint)
    with peft_quietly():
        model = PeftModel.from_pretrained(prepare_base(cfg, lm), checkpoint, is_trainable=True)
    # The base as this kto names it (formats/compute/sources.py peft_base: a GGUF file's folder),
    # not as the checkpoint's adapter_config.json recorded it (an earlier kto named the file).
    for config in model.peft_config.values():
        config.base_model_name_or_path = lm.name_or_path or config.base_model_name_or_path
    return model


def check_adapter_settings(cfg: TrainConfig, lm: torch.nn.Module, checkpoint: Path) -> None:
    saved = adapter_config(checkpoint)
    expected = lora_config(cfg, lm)
    now = {
        "r": expected.r,
        "lora_alpha": expected.lora_alpha,
        "lora_dropout": expected.lora_dropout,
        "target_modules": sorted(expected.target_modules),
        # Adapters saved before exclude_modules was set (on a multimodal model's vision tower too)
        # are other adapters than the flags make now; for a Llama both are None.
        "exclude_modules": expected.exclude_modules,
    }
    there = {k: sorted(saved.get(k) or []) if k == "target_modules" else saved.get(k) for k in now}
    differs = [f"{k} ({there[k]} there, {now[k]} now)" for k in now if there[k] != now[k]]
    if differs:
        # exclude_modules differs only for a multimodal run made before the targets were kept to the
        # decoder: its adapters also sit on the vision tower, which no flag recreates.
        why = (
            "; adapters made before they were kept to the decoder cannot be resumed: start the run again"
            if any(d.startswith("exclude_modules") for d in differs)
            else ""
        )
        raise InputError(f"--resume: the adapters in {checkpoint} were made with other " + ", ".join(differs) + why)


def check_checkpoint_kind(cfg: TrainConfig, checkpoint: Path) -> None:
    """An adapter checkpoint resumes only with adapters on, a whole-model one only without."""
    if enabled(cfg) and not is_adapter_dir(checkpoint):
        raise InputError(f"--resume: {checkpoint} holds a whole model (a run without --lora-r); resume it without --lora-r")
    if not enabled(cfg) and is_adapter_dir(checkpoint):
        r = adapter_config(checkpoint).get("r")
        raise InputError(f"--resume: {checkpoint} holds LoRA adapters (r = {r}), not a whole model; pass --lora-r {r} and the run's other --lora-* flags")


def write_merged(base: torch.nn.Module, adapter_dir: Path, tokenizer: PreTrainedTokenizerBase, out: Path, files: Mapping[str, str] | None = None) -> None:
    """OUT/final-merged: base + adapters folded into the weights, an ordinary HF model directory,
    with `files` (its model card) inside before it appears.
    `base` is a fresh unquantized copy (QLoRA merges into full-precision weights, as is usual)."""
    from .checkpoint import saved_dir

    merged = with_adapters(base, adapter_dir).merge_and_unload()
    with saved_dir(out, files) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


# ---- comparing a resumed run's targets with its record --------------------------------------


def target_names(value: object) -> frozenset[str] | None:
    """lora_target_modules as peft reads it: a set of module names (adapters.target_modules strips
    each and drops empty ones, and peft matches names regardless of order); None for the default,
    every linear layer ("all" and "all-linear" mean it too: formats.config_keys.target_modules_value)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "all", "all-linear")):
        return None
    names = value.split(",") if isinstance(value, str) else value
    return frozenset(str(n).strip() for n in names if str(n).strip())


def same_targets(there: object, now: object, default_targets: Callable[[], Sequence[str]] | None) -> bool:
    """Two lora_target_modules values that adapt the same layers: the same names in any order or
    spacing, or the default (None) and its list written out, as check_adapter_settings compares
    the checkpoint's adapters. Runs are recorded with the value as given, so a run recorded before
    this comparison still resumes; only the comparison is by names."""
    a, b = target_names(there), target_names(now)
    if a == b:
        return True
    if (a is None) == (b is None) or default_targets is None:
        return False
    return (a or b) == frozenset(default_targets())


def keep_recorded_targets(record: dict, saved: dict) -> None:
    """After a resume found no difference: `record` takes the saved lora_target_modules, so the
    record stays as the run wrote it and the settings digest (which hashes the value as written)
    matches the checkpoints' own."""
    if "lora_target_modules" in saved.get("config", {}):
        record["config"]["lora_target_modules"] = saved["config"]["lora_target_modules"]


def model_targets(cfg: TrainConfig) -> Callable[[], Sequence[str]]:
    """What lora_target_modules None stands for with --model: its decoder's linear layers
    (adapters.target_modules' default), read from the model built on the meta device. Lazy: only
    a resume that compares None with a list builds it."""

    def names() -> Sequence[str]:
        from kto.formats.compute.meta_device import model_skeleton
        from kto.formats.compute.sources import resolve_source

        return linear_names(model_skeleton(resolve_source(cfg.model), trust_remote_code=cfg.trust_remote_code))

    return names
