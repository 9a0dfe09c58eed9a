"""The keys a dumped config carries that mean nothing here at their defaults: transformers'
`TrainingArguments.to_dict()` (5.x), the fields TRL's `KTOConfig` and `ModelConfig` add to it,
which config_keys.py does not list (docs/migrating.md, "Keys that train the same only at their
defaults").

Each key has the values a dumped file writes for it (transformers' default first; TRL's where it
differs; values that ask for the same, such as null), why they train the same here, and either
what kto does instead of any other value (refused) or None: no value of it can change what
kto-train computes (logging, hub and loader settings), so any value is skipped with a note.

A static table: formats/ stays light (no transformers import); tests/formats/test_config_dumped.py
checks each default against the installed transformers', so an upgrade that changes one shows.
Keys with a table in config_keys.py (IGNORED, ...) or config_unsupported.py (UNSUPPORTED) are not repeated here: those
tables are read first (config_names.resolve).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .config_keys import PRECOMPUTE, TRAIN, same_value


@dataclass(frozen=True)
class Dumped:
    defaults: tuple[Any, ...]
    """The values that train the same: transformers' default first, then TRL's and their twins."""
    why: str
    """Why they train the same here."""
    refused: str | None = None
    """What kto does instead of any other value; None: any value is skipped (it cannot change
    what is trained)."""


class Verdict(NamedTuple):
    accepted: bool
    said: str
    """Accepted: why it trains the same; refused: what kto does instead."""
    at_default: bool
    """A value the dump writes by default: named in one grouped line, not a line of its own."""


_MEMORY = "memory and speed only, never the numbers"
_EVAL = "evaluation settings of transformers' Trainer; kto-train evaluates the eval cache every eval_steps, which never changes the training"
_LOG = "logging only: kto-train logs to OUT/metrics.jsonl and the report_to tracker"
_HUB = "kto-train uploads final/ once, after the run, to push_to_hub (hub_model_id)"
_LOADER = "kto-train reads batches memory-mapped from the cache, with no DataLoader workers"
_DDP = "several processes are set up by the launcher (accelerate launch, torchrun) and accelerate, as kto-train wraps the model itself"
_COMPILE = "kto-train does not compile the model (torch.compile); leave torch_compile out"
_ORDER = "kto-train draws each epoch's order from seed: micro-batches of rows of similar length, steps shuffled (train/data.py)"

_TRAINING_ARGUMENTS = {
    "optim_args": Dumped((None, ""), "no extra optimizer arguments", "the optimizer is AdamW (fused on CUDA) with no extra arguments"),
    "optim_target_modules": Dumped((None,), "no GaLore/APOLLO optimizer", "it is for GaLore/APOLLO optimizers; kto-train's optimizer is AdamW"),
    "average_tokens_across_devices": Dumped(
        (True,),
        "transformers' token count scales its own cross-entropy loss; the KTO loss, in TRL as here, is a mean over the step's rows",
    ),
    "label_smoothing_factor": Dumped(
        (0.0,),
        "transformers smooths the labels of its own cross-entropy loss only; TRL's KTOTrainer and kto-train compute the KTO loss unsmoothed",
    ),
    "bf16_full_eval": Dumped((False,), f"{_EVAL}; evaluation runs in the training precision"),
    "fp16_full_eval": Dumped((False,), f"{_EVAL}; evaluation runs in the training precision"),
    "activation_checkpointing_kwargs": Dumped((None, {}), _MEMORY),
    "torch_compile": Dumped((False,), "the model is not compiled here either", _COMPILE),
    "torch_compile_backend": Dumped((None,), "no compile backend", _COMPILE),
    "torch_compile_mode": Dumped((None,), "no compile mode", _COMPILE),
    "liger_kernel_config": Dumped((None, {}), "configures use_liger_kernel's kernels, faster kernels for the same maths"),
    "neftune_noise_alpha": Dumped(
        (None, 0, 0.0), "no noise on the embeddings", "NEFTune noise on the embeddings is not supported; kto-train trains without it"
    ),
    "torch_empty_cache_steps": Dumped((None,), _MEMORY),
    "auto_find_batch_size": Dumped(
        (False,), "the batch size is batch_size", "kto-train trains at batch_size and never halves it; lower batch_size (raise grad_accum) to fit"
    ),
    "log_on_each_node": Dumped((True,), _LOG),
    "logging_nan_inf_filter": Dumped((True,), _LOG),
    "log_level": Dumped(("passive",), _LOG),
    "log_level_replica": Dumped(("warning",), _LOG),
    "disable_tqdm": Dumped((False,), "kto-train's progress bar is on stderr, the step lines on stdout"),
    "project": Dumped(("huggingface",), "trackers get kto-train's project name (kto) and run_name"),
    "trackio_space_id": Dumped((None,), _LOG),
    "trackio_bucket_id": Dumped((None,), _LOG),
    "trackio_static_space_id": Dumped((None,), _LOG),
    "eval_delay": Dumped((0,), _EVAL),
    "prediction_loss_only": Dumped((False,), _EVAL),
    "eval_do_concat_batches": Dumped((True,), _EVAL),
    "eval_use_gather_object": Dumped((False,), _EVAL),
    "eval_accumulation_steps": Dumped((None,), _EVAL),
    "include_for_metrics": Dumped(([], None), _EVAL),
    "batch_eval_metrics": Dumped((False,), _EVAL),
    "save_on_each_node": Dumped((False,), "checkpoints are written by the main process (FSDP: each process its shard)"),
    "enable_jit_checkpoint": Dumped((False,), "checkpoints are saved every save_steps; a run stopped between them resumes from the last one"),
    "hub_token": Dumped(("<HUB_TOKEN>", None), "to_dict() masks it; kto-train uploads with the token huggingface_hub finds (HF_TOKEN, hf auth login)"),
    "hub_strategy": Dumped(("every_save",), _HUB),
    "hub_always_push": Dumped((False,), _HUB),
    "hub_revision": Dumped(
        (None,), "no revision: the main branch", "kto-train uploads to the repo's main branch; push to a branch with hf upload REPO OUT/final --revision REV"
    ),
    "greater_is_better": Dumped((None,), "checkpoints are kept by step, not by a metric"),
    "restore_callback_states_from_checkpoint": Dumped((False,), "kto-train has no Trainer callbacks; resume restores the whole state it saved"),
    "full_determinism": Dumped(
        (False,),
        "kto-train seeds every shuffle and torch from seed; it does not force torch's deterministic kernels, so CUDA runs may differ in the last bits",
    ),
    "data_seed": Dumped((None,), "the data order follows seed", f"{_ORDER}; give the data_seed as seed (which also seeds torch) or leave it out"),
    "use_cpu": Dumped(
        (False,), "kto-train uses the accelerator it finds", "kto-train uses the GPU it finds; hide it (CUDA_VISIBLE_DEVICES=) to train on the CPU"
    ),
    "accelerator_config": Dumped(
        (
            {
                "split_batches": False,
                "dispatch_batches": None,
                "even_batches": True,
                "use_seedable_sampler": True,
                "non_blocking": False,
                "gradient_accumulation_kwargs": None,
            },
            None,
            {},
        ),
        "accelerate's default: each process takes its own batch_size rows a micro-batch, as kto-train plans them",
        "kto-train plans every process's rows itself (batch_size each; train/data.py), not through accelerate's DataLoader settings",
    ),
    "parallelism_config": Dumped(
        (None,), "no tensor or context parallelism", "kto-train shards with FSDP2 only (fsdp: true); it has no tensor or context parallelism"
    ),
    "dataloader_pin_memory": Dumped((True,), _LOADER),
    "dataloader_persistent_workers": Dumped((False,), _LOADER),
    "dataloader_prefetch_factor": Dumped((None,), _LOADER),
    "dataloader_multiprocessing_context": Dumped((None,), _LOADER),
    "dataloader_in_order": Dumped((True,), _LOADER),
    "label_names": Dumped((None,), "the cache holds the labels; transformers' input names mean nothing here"),
    "train_sampling_strategy": Dumped(
        ("random", "sequential"),
        f"{_ORDER}; TRL's sequential kept its in-batch KL pairs, which kto-train forms itself",
        f"batches follow kto-train's own seeded plan; it does not group rows by length ({_ORDER})",
    ),
    "length_column_name": Dumped(("length",), "read only by group_by_length, which kto-train does not do"),
    "ddp_find_unused_parameters": Dumped((None,), _DDP),
    "ddp_bucket_cap_mb": Dumped((None,), _DDP),
    "ddp_broadcast_buffers": Dumped((None,), _DDP),
    "ddp_static_graph": Dumped((None,), _DDP),
    "ddp_backend": Dumped((None,), _DDP),
    "debug": Dumped(([], "", None), "debugging output only"),
    "skip_memory_metrics": Dumped((True,), _LOG),
    "do_predict": Dumped((False,), "kto-train does not predict; sample from OUT/final afterwards"),
}

# TRL's KTOConfig (and its base config) and ModelConfig, beyond TrainingArguments and config_keys.py.
_TRL = {
    "pad_to_multiple_of": Dumped((None,), "padded positions are masked, so the padding cannot change the result"),
    "activation_offloading": Dumped((False,), _MEMORY),
    "ref_model_mixup_alpha": Dumped((0.6,), "read only with sync_ref_model: the reference is kto-precompute's cache, fixed"),
    "ref_model_sync_steps": Dumped((512,), "read only with sync_ref_model: the reference is kto-precompute's cache, fixed"),
    "is_encoder_decoder": Dumped((None, False), "a decoder-only model", "kto-train trains decoder-only causal language models only"),
    "use_liger_loss": Dumped((False,), "a fused kernel for the same KTO loss; kto-train computes the LM head in chunks (chunk_size)"),
    "base_model_attribute_name": Dumped(("model",), "read only by use_liger_loss"),
    "bnb_4bit_quant_type": Dumped(("nf4",), "kto-train's 4-bit weights are NF4 too", "kto-train loads 4-bit weights as NF4 only (load_in_4bit)"),
    "use_bnb_nested_quant": Dumped(
        (False,), "with load_in_4bit, kto-train always nests the quantization constants (double quantization): memory, at a rounding far below NF4's"
    ),
}
_PRECOMPUTE_TRL = {
    "precompute_ref_batch_size": Dumped((None,), "kto-precompute batches the reference by batch_tokens; a batch size cannot change the log-probs"),
}

DUMPED: dict[str, dict[str, Dumped]] = {TRAIN: {**_TRAINING_ARGUMENTS, **_TRL}, PRECOMPUTE: _PRECOMPUTE_TRL}


def _same(value: Any, default: Any) -> bool:
    """Equal, or the same number spelt two ways; a mapping whose items all equal the default's
    (a YAML that keeps some of `accelerator_config`'s keys) is the default too."""
    if isinstance(default, Mapping) and isinstance(value, Mapping) and default:
        return value.keys() <= default.keys() and all(same_value(v, default[k]) for k, v in value.items())
    return (type(value) is type(default) and value == default) if isinstance(default, (list, dict)) else same_value(value, default)


def dumped_key(command: str, key: str, value: Any) -> Verdict | None:
    """What `command` does with a dumped config's `key: value`: None when the table does not
    list it; accepted at a default (one grouped line), accepted at any other value of a key no
    value of which changes the training (a line saying why), or refused with what kto does."""
    entry = DUMPED[command].get(key)
    if entry is None:
        return None
    if any(_same(value, default) for default in entry.defaults):
        return Verdict(True, entry.why, True)
    if entry.refused is None:
        return Verdict(True, entry.why, False)
    return Verdict(False, entry.refused, False)
