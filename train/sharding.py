"""FSDP2 through accelerate: parameters, gradients and optimizer state sharded over the processes.

Turned on by `accelerate launch --use_fsdp --fsdp_version 2 …` (or an accelerate config file), or
by `--fsdp` (which is how `torchrun` gets it). accelerate's own FSDP2 code does the sharding:
`accelerator.prepare` calls torch's `fully_shard` on every decoder layer (the model's
`_no_split_modules`), then on the root, `CompletionLogps`; `clip_grad_norm_` and `unwrap_model`
know FSDP2's DTensors. Nothing here shards anything by hand.

The chunked LM head. `CompletionLogps.forward` reads `lm_head.weight` itself (it applies the head
only at completion positions, `formats/compute/logprob.py`) instead of calling the head module. Under
FSDP2 a parameter is a full tensor only while the FSDP unit that owns it runs its forward. The
head is not a decoder layer, so it belongs to the *root* unit, and the root is `CompletionLogps`:
its pre-forward hook all-gathers the head's weight (and the embeddings and final norm) before the
body of `CompletionLogps.forward` runs, so the weight read there is the unsharded one, and its
post-backward reduce-scatters the head's gradient. Wrapping the head in a unit of its own would
break this (the weight would be a DTensor shard there): `before_prepare` keeps the wrap policy
to decoder layers.

CPU. accelerate 1.x starts FSDP only on accelerators: its state turns MULTI_GPU/… into FSDP, but
leaves MULTI_CPU (several gloo processes) as plain DDP. torch's `fully_shard` itself runs on gloo,
so `promote_cpu_state` switches accelerate's state to FSDP there, and the code that runs after is
accelerate's own FSDP2 path, the same as on GPUs. `torchrun --nproc_per_node N -m kto.train.cli …
--fsdp` (the tests) and `accelerate launch --use_fsdp --fsdp_version 2 --num_processes N` both run
it on CPU.

Checkpoints are sharded: each process writes its shards of the model (only the trainable
adapters under LoRA) and of the optimizer through `torch.distributed.checkpoint` (DCP), which can
load them back on another number of processes. The main process records the sha256 of every
rank's files (checkpoint.record_checksums) before the rename, and `--resume` checks them as it
does a whole-model checkpoint's; the loaded shards are checked finite on every rank. `final/` is one ordinary directory (a HF model, or
a PEFT adapter dir under LoRA) written by the main process from a full state dict.

DeepSpeed ZeRO-2/3 through an accelerate config is not refused, but it is untested: it does not
run on CPU, and the checkpoint code here is DCP's, not DeepSpeed's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kto.formats.atomic import disk_full_names
from kto.formats.compute.sharded import SHARDED_DIR
from kto.formats.errors import InputError, log
from kto.formats.runrecord import checkpoint_dir

from .adapters import quantized
from .checkpoint import STATE_NAME, Position, record_checksums, restore_rng_states, rng_states, save_torch, saved_dir, uniform_permissions
from .guard import check_loaded_weights

if TYPE_CHECKING:
    from collections.abc import Mapping

    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import PreTrainedTokenizerBase

    from .config import TrainConfig

# The DCP directory inside a checkpoint; kto-inspect score reads the policy's weights there too
# (formats/compute/sharded.py, load_sharded_weights: the "model" state dict, keys "lm.<HF key>").
SHARDED = SHARDED_DIR


def requested(cfg: TrainConfig) -> bool:
    return cfg.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(cfg: TrainConfig) -> FullyShardedDataParallelPlugin | None:
    """The FSDP2 plugin for Accelerator(fsdp_plugin=…), or None when FSDP is not asked for.
    Settings that `accelerate launch` put in the environment (FSDP_*) still apply."""
    if not requested(cfg):
        return None
    if cfg.dtype == "fp16":
        # accelerate's FSDP2 has no gradient scaler for fp16 *weights*, and their updates would
        # underflow without one.
        raise InputError("--dtype fp16: not with FSDP; use --dtype fp32 (with --mixed-precision bf16) or --dtype bf16")
    if quantized(cfg):
        raise InputError(
            f"--load-in-{'4' if cfg.load_in_4bit else '8'}bit: not with FSDP here (bitsandbytes weights are not sharded by it); use LoRA on unquantized weights, or one process"
        )
    version = os.environ.get("FSDP_VERSION", "2")
    if version != "2":
        raise InputError(f"FSDP version {version} (FSDP_VERSION from accelerate launch): kto-train shards with FSDP2 only; pass --fsdp_version 2")
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    # The weights keep their own dtype (param_dtype=None: fp32 weights under bf16 autocast, the
    # `amp-bf16` numerics the cache was scored with and the step-0 check reports; --dtype bf16
    # weights stay bf16) and gradients are reduced in fp32. Without a policy, accelerate's state
    # calls set_mixed_precision("bf16") on GPUs (never on CPU processes), which makes one that
    # all-gathers bf16 parameters and reduces bf16 gradients; a policy given here it keeps
    # (accelerate 1.16 FullyShardedDataParallelPlugin.set_mixed_precision, override=False).
    kwargs = {"fsdp_version": 2, "mixed_precision_policy": MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)}
    if "FSDP_AUTO_WRAP_POLICY" not in os.environ:
        kwargs["auto_wrap_policy"] = "transformer_based_wrap"
    if "FSDP_RESHARD_AFTER_FORWARD" not in os.environ:
        kwargs["reshard_after_forward"] = True  # ZeRO-3: parameters sharded between uses too
    return FullyShardedDataParallelPlugin(**kwargs)


def promote_cpu_state(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin | None) -> Accelerator:
    """See the module docstring: on several CPU processes, make accelerate run its FSDP2 path."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
        # AcceleratorState() copies PartialState's shared dict over its own each time it is
        # constructed (accelerate does that in several helpers); set it there too, as accelerate
        # itself does at the end of AcceleratorState.__init__.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def is_fsdp(accelerator: Accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def before_prepare(accelerator: Accelerator, lm: torch.nn.Module) -> None:
    """Wrap each decoder layer. accelerate looks for `_no_split_modules` on the root it is given,
    which is CompletionLogps; the class names live on the HF model (or the PEFT model's base)."""
    if not is_fsdp(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap is None:
        names = list(getattr(lm, "_no_split_modules", None) or [])
        if not names:
            raise InputError(
                f"--fsdp: {type(lm).__name__} names no decoder layer class (_no_split_modules) to shard by; "
                "pass --fsdp_transformer_layer_cls_to_wrap to accelerate launch"
            )
        plugin.transformer_cls_names_to_wrap = names
    log(
        f"FSDP2 over {accelerator.num_processes} processes: each {', '.join(plugin.transformer_cls_names_to_wrap)} "
        "and the root (embeddings, final norm, LM head) sharded",
        accelerator,
    )


def _options(adapters_only: bool, **kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Under LoRA the frozen base is not saved: it is --model, loaded again on resume.
    return StateDictOptions(ignore_frozen_params=adapters_only, **kw)


def shared_temp_names(path: Path) -> tuple[Path, Path]:
    """The temp and aside names of a sharded checkpoint. Every rank writes into the temp folder,
    so its name cannot carry each writer's pid and thread as formats/atomic.py's names do;
    "-0-0" and "-0" stand in for them (one writer per --out: the run holds its lock), and keep
    the names in the exact shapes `remove_stale_temps` recognises, so a killed save is cleared
    (or its .old put back) at the next start."""
    return path.with_name(f".{path.name}.tmp-0-0"), path.with_name(f".{path.name}.old-0")


def save_checkpoint(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    tokenizer: PreTrainedTokenizerBase,
    position: Position,
    plan: dict,
    accelerator: Accelerator,
    adapters_only: bool,
    adapter_config: dict | None = None,
) -> Path:
    """OUT/checkpoint-STEP/: sharded/ (DCP: model + optimizer), scheduler.pt, rng-RANK.pt,
    the tokenizer, trainer_state.json; written under a temp name that every rank agrees on,
    then renamed by the main process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = checkpoint_dir(out, position.global_step)
    tmp, old = shared_temp_names(path)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(adapters_only))
    with disk_full_names(path):
        try:
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=tmp / SHARDED)
        except CheckpointException as exc:
            # A BaseException, whose text carries each rank's error (on a full disk torch's
            # "unexpected pos"): as an Exception, disk_full_names reads it.
            raise RuntimeError(f"torch.distributed.checkpoint: {exc}") from exc
        save_torch(rng_states(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with disk_full_names(path):
            save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
            tokenizer.save_pretrained(tmp)
            if adapter_config is not None:
                adapter_config.save_pretrained(tmp)  # adapter_config.json: marks an adapter checkpoint
            (tmp / STATE_NAME).write_text(json.dumps({"position": position.to_json(), "plan": plan, "sharded": True}, indent=2))
            record_checksums(tmp)  # every rank's files are there: the wait above
            uniform_permissions(tmp)
            _fsync_files(tmp)
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _fsync_files(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def is_sharded_checkpoint(path: Path | None) -> bool:
    return path is not None and (path / SHARDED).is_dir()


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: Accelerator,
    adapters_only: bool,
) -> tuple[Position, dict]:
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from kto.formats.compute import safe_dcp

    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(adapters_only))
    state = {"model": model_sd, "optimizer": optim_sd}
    # Every rank reads the same .metadata: a refusal is every rank's. Only checkpoint metadata
    # classes are unpickled there, and the optimizer's bytes items (param_groups) weights_only.
    folder = safe_dcp.DcpFolder(path / SHARDED, "--resume", path, every_rank=True)
    safe_dcp.load(state, folder, safe_dcp.read_metadata(folder))  # fills every key asked for, or raises
    # Not strict under LoRA: the frozen base is not in the checkpoint (it came from --model).
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=_options(adapters_only, strict=not adapters_only)
    )
    check_loaded_weights(model, accelerator, path)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"))
    rng = path / f"rng-{accelerator.process_index}.pt"
    restore_rng_states(rng if rng.is_file() else path / "rng-0.pt")
    saved = json.loads((path / STATE_NAME).read_text())
    return Position(**saved["position"]), saved["plan"]


def save_final(
    final: Path, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, accelerator: Accelerator, adapters_only: bool, files: Mapping[str, str]
) -> None:
    """One HF directory (or PEFT adapter directory) from the full state dict, gathered on the
    main process's CPU (`cpu_offload`: the other processes get an empty dict), with `files` (the
    model card, main process) written inside before the rename."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=_options(adapters_only, full_state_dict=True, cpu_offload=True))
    if accelerator.is_main_process:
        lm = accelerator.unwrap_model(model).lm
        # Keys are relative to the root, CompletionLogps: "lm.<the HF model's own key>".
        state = without_tied_copies({k.removeprefix("lm."): v for k, v in full.items()}, lm)
        with saved_dir(final, files) as tmp:
            lm.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def without_tied_copies(state: dict[str, torch.Tensor], lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`state` less the weights that `lm` declares tied to another one that `state` holds (an LM
    head tied to the embeddings: lm_head.weight), as save_pretrained leaves them out of a whole
    model. save_pretrained finds tied weights by their shared storage, and the gathered full state
    dict holds a copy of each: without this, final/ would store the head a second time.
    from_pretrained ties it back from config.json. A copy that differs from its source is kept:
    it is not tied, whatever the model says."""
    tied = lm.get_expanded_tied_weights_keys(all_submodels=True) if hasattr(lm, "get_expanded_tied_weights_keys") else {}
    copies = {t for t, s in tied.items() if t in state and s in state and torch.equal(state[t], state[s])}
    return {k: v for k, v in state.items() if k not in copies}
