"""Keys of TRL and LLaMA-Factory that ask for something kto-train or kto-precompute does not do.

Each is refused with what to do instead (rather than with a "did you mean" that compares
spellings only), except at the values that ask for nothing (their dumped defaults, or a setting
that trains the same here), which are skipped with a note saying why. config_names reads the
table after config_keys' own keys, aliases and ignored keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config_commands import PRECOMPUTE, TRAIN, same_value


@dataclass(frozen=True)
class Unsupported:
    """A key of TRL or LLaMA-Factory that asks for something this tool does not do: refused with
    what to do instead, rather than with a "did you mean" that compares spellings only."""

    reason: str
    inert: tuple[Any, ...] = (None,)
    """Values that ask for nothing (what their dumped defaults write): skipped with a note."""
    inert_why: str = "asks for nothing here"
    """What the note says of an inert value: why it trains the same here."""
    inert_whys: tuple[tuple[Any, str], ...] = ()
    """(value, what the note says of it) where an inert value has a note of its own."""
    short: str | None = None
    """What a "did you mean" pointed at the key says of it, where the reason's first clause
    does not read whole (what_it_is)."""

    def why(self, value: Any) -> str:
        """The note's reason for an inert `value`."""
        return next((why for inert, why in self.inert_whys if same_value(inert, value)), self.inert_why)


_SWITCH = "a true/false switch"
_REFERENCE = "the reference is the model kto-precompute scores the cache with"
_UNSUPPORTED_BOTH = {
    "model_revision": Unsupported(
        "a hub revision is not supported; fetch it to a local directory (hf download NAME --revision REV --local-dir DIR) "
        "and give that directory as model_name_or_path",
        (None, "main"),
    ),
    "ref_model": Unsupported(f"{_REFERENCE}: give it to kto-precompute as model_name_or_path (or --model); kto-train's model is where the policy starts"),
    "ref_model_adapters": Unsupported(f"{_REFERENCE}, as it is: give kto-precompute a model with the adapters merged in"),
    "ref_model_quantization_bit": Unsupported(f"{_REFERENCE}, once, in kto-precompute's dtype; it is never quantized"),
    "model_init_kwargs": Unsupported(
        "from_pretrained's keywords are options here: give dtype (torch_dtype), attn_implementation, trust_remote_code as keys", (None, {})
    ),
    "label_pad_token_id": Unsupported(
        "prompt and padding are masked by position here, not by a label id; -100 (TRL's default, no token's id) is the one value that trains the same",
        (-100,),
        "prompt and padding are masked by position, as TRL's -100 masks them",
    ),
    "sync_ref_model": Unsupported(
        "the reference is fixed: kto-precompute scored it once into the cache, so it cannot follow the policy (TR-DPO's sync)", (None, False)
    ),
}
# LLaMA-Factory's ModelArguments that load the model (hparams/model_args.py): both commands load it.
_UNSUPPORTED_BOTH.update(
    {
        "rope_scaling": Unsupported(
            "RoPE scaling is not supported; the model loads with its config.json's own rope_scaling: to extend the context, "
            "write rope_scaling into a copy of the model's config.json and give that folder as model_name_or_path"
        ),
        "low_cpu_mem_usage": Unsupported(_SWITCH, (None, True, False), "how transformers loads the weights, not which weights: the model loaded is the same"),
    }
)
_FINE = "LLaMA-Factory refuses it outside SFT too"
_UNSUPPORTED_DATA = {
    "truncation_mode": Unsupported(
        "kto-precompute keeps the end of a prompt it cuts (keep_end); there is no keep_start", ("keep_end",), "a cut prompt keeps its end here too"
    ),
    # LLaMA-Factory's KTO stage tokenizes with FeedbackDatasetProcessor, which never packs and masks
    # every prompt token; its parser refuses neat_packing, train_on_prompt and mask_history there.
    "packing": Unsupported(
        "LLaMA-Factory's KTO stage does not pack either, but packing: true makes it cut at cutoff_len - 1: leave packing out and give that cutoff_len",
        (None, False),
        "LLaMA-Factory's KTO stage does not pack either",
        short="LLaMA-Factory's KTO stage does not pack either",
    ),
    "neat_packing": Unsupported(f"{_FINE}; kto never packs rows", (None, False), "rows are never packed"),
    "train_on_prompt": Unsupported(f"{_FINE}; the KTO loss reads completion tokens only", (None, False), "the loss reads completion tokens only"),
    "mask_history": Unsupported(f"{_FINE}; every earlier turn is prompt and only the last answer is trained", (None, False), "earlier turns are prompt"),
    "eval_dataset": Unsupported(
        "give its file as eval_data (kto-precompute --eval-data FILE, repeatable; hf:NAME:SPLIT for a hub split), or hold out a fraction "
        "with val_size; a dataset_info.json entry is read for the training data (dataset) only: give that entry's file_name as eval_data"
    ),
    "default_system": Unsupported(
        "the tokenizer's chat template renders its own default system prompt (for a template that has one); give each row's system "
        "prompt in a column (system_column), or a chat_template: FILE.jinja with the default you want",
        (None, ""),
    ),
    "mix_strategy": Unsupported(
        "kto-precompute concatenates its inputs (concat, LLaMA-Factory's default); interleaving them is not supported",
        (None, "concat"),
        "the inputs are concatenated, as concat",
    ),
    # LLaMA-Factory's DataArguments (hparams/data_args.py) and ModelArguments read in tokenizing.
    "model_max_length": Unsupported(
        "LLaMA-Factory derives it from cutoff_len (its help: do not specify it) and its parser does not take it from a file: "
        "give cutoff_len (kto-precompute's max_length)"
    ),
    "streaming": Unsupported(
        "kto-precompute reads every row before it writes the cache (each row is paired with another row's completion for the KL "
        "term), so streaming is not supported: leave it out; training reads the cache memory-mapped",
        (None, False),
        "kto-precompute reads the rows once, into the cache",
    ),
    "tokenized_path": Unsupported(
        "LLaMA-Factory's saved tokenized dataset is not read here: kto-precompute tokenizes into its own cache (cache: DIR), "
        "which kto-train reads; leave tokenized_path out"
    ),
    "interleave_probs": Unsupported(
        "interleaving datasets is not supported (LLaMA-Factory takes it only with an interleave mix_strategy): "
        "kto-precompute concatenates its inputs; leave it out"
    ),
    "split_special_tokens": Unsupported(
        "kto-precompute tokenizes with the model's own (fast) tokenizer, special tokens whole, as LLaMA-Factory's default; "
        "splitting them is not supported: leave it out",
        (None, False),
        "special tokens stay whole, as false",
    ),
    # LLaMA-Factory's KTO collator pads labels with the pad id when false: padding is trained there.
    "ignore_pad_token_for_loss": Unsupported(
        "padding is never trained here (it is masked by position), as LLaMA-Factory's default true; "
        "false, which trains its KTO stage on pad tokens, is not supported: leave it out",
        (None, True),
        "padded positions are masked, as true",
    ),
    "enable_thinking": Unsupported(
        "LLaMA-Factory's template switch; the tokenizer's own chat template is used here: write chat_template_kwargs: "
        "{enable_thinking: false} for a template that reads it",
        (None, True),
        "the chat template renders with its own defaults",
    ),
}
_NESTS = "kto-train's 4-bit loading always nests the quantization constants (double quantization): memory, at a rounding far below NF4's"
# LLaMA-Factory's QuantizationArguments and LoraArguments (defaults: quantization_method bnb,
# quantization_type nf4, double_quantization true, pissa_init and create_new_adapter false,
# loraplus_lr_ratio and additional_target null), as its QLoRA examples write them: QLoRA as
# kto-train's load_in_4bit does it (train/adapters.py: bitsandbytes NF4, nested) and plain LoRA.
_LLAMA_FACTORY_LORA = {
    "quantization_method": Unsupported(
        "kto-train quantizes with bitsandbytes only (quantization_bit 4 or 8, as LLaMA-Factory's bnb): leave quantization_method out",
        (None, "bnb", "bitsandbytes"),  # bitsandbytes: its older name, still in its otfq example
        "kto-train quantizes with bitsandbytes too, at quantization_bit",
    ),
    "quantization_type": Unsupported("kto-train loads 4-bit weights as NF4 only (load_in_4bit)", (None, "nf4"), "kto-train's 4-bit weights are NF4 too"),
    # Either value trains the same, as TRL's use_bnb_nested_quant (config_dumped.py).
    "double_quantization": Unsupported(
        f"{_SWITCH}; {_NESTS}",
        (None, True, False),
        _NESTS,
        ((True, "kto-train's 4-bit loading nests the quantization constants too (double quantization)"),),
    ),
    "pissa_init": Unsupported(
        "PiSSA initialization is not supported; LoRA starts as peft's default (B zero: at step 0 the policy is the reference)",
        (None, False),
        "LoRA starts as peft's default, B zero",
    ),
    # Read by LLaMA-Factory only to train with adapter_name_or_path (refused here): without it,
    # either value starts fresh adapters.
    "create_new_adapter": Unsupported(f"{_SWITCH}; kto-train starts fresh adapters on model", (None, False, True), "kto-train starts fresh adapters on model"),
    "loraplus_lr_ratio": Unsupported(
        "LoRA+ is not supported: every adapter weight trains at lr (A and B alike)", (None,), "every adapter weight trains at lr, no LoRA+ ratio"
    ),
    "additional_target": Unsupported(
        "training modules beside the adapters (peft's modules_to_save) is not supported; to train every weight, turn LoRA off (finetuning_type: full)",
        (None,),
        "only the LoRA adapters train",
    ),
}
_OTHER_OPTIMIZER = "is not supported; kto-train trains with torch's AdamW, LoRA (lora_r) or every weight: leave it out"
_SAME_GRADIENTS = "which checkpointing implementation: memory and speed only, the gradients are the same"
# LLaMA-Factory's ModelArguments and FinetuningArguments that train (hparams/): its KTO trainer
# (train/kto/trainer.py) reads no dpo_label_smoothing, a DPO setting.
_LLAMA_FACTORY_TRAINING = {
    "use_galore": Unsupported(f"GaLore (gradient low-rank projection) {_OTHER_OPTIMIZER}", (None, False)),
    "use_badam": Unsupported(f"BAdam (block coordinate optimization) {_OTHER_OPTIMIZER}", (None, False)),
    "use_adam_mini": Unsupported(f"Adam-mini {_OTHER_OPTIMIZER}", (None, False)),
    "dpo_label_smoothing": Unsupported(
        "cDPO's label smoothing, a DPO setting: LLaMA-Factory's KTO stage does not read it, and the KTO loss here has none: leave it out",
        (None, 0, 0.0),
        "cDPO's label smoothing, a DPO setting that the KTO loss does not read",
    ),
    "disable_shuffling": Unsupported(
        "kto-train batches rows in the cache's seeded order (seed); an unshuffled order is not supported: leave it out", (None, False)
    ),
    "upcast_layernorm": Unsupported(
        _SWITCH,
        (None, True, False),
        "kto-train keeps every weight in fp32 (its default dtype; mixed_precision casts only the matmuls), layernorms included; with dtype bf16 they are bf16",
    ),
    "upcast_lmhead_output": Unsupported(
        _SWITCH, (None, True, False), "log-probs are computed in fp32 here from the LM head's output (formats/compute), whatever the dtype"
    ),
    "use_reentrant_gc": Unsupported(_SWITCH, (None, True, False), _SAME_GRADIENTS),
    "enable_liger_kernel": Unsupported(
        _SWITCH, (None, True, False), "a faster kernel for the same maths; kto-train computes the LM head in chunks (chunk_size)"
    ),
    "use_unsloth": Unsupported(_SWITCH, (None, True, False), "unsloth's faster kernels for the same LoRA maths; kto-train trains LoRA with peft"),
}
_TORCH_ADAMW = "torch's AdamW, as kto-train's, fused on CUDA"
_OPTIM = Unsupported(
    "another optimizer's maths; kto-train trains with torch's AdamW (adamw_torch, adamw_torch_fused; paged_adamw_32bit is the same maths): leave optim out",
    (None, "adamw_torch", "adamw_torch_fused", "paged_adamw_32bit"),
    _TORCH_ADAMW,
    (("paged_adamw_32bit", "same maths as kto-train's AdamW, no paging"),),
)
UNSUPPORTED: dict[str, dict[str, Unsupported]] = {
    PRECOMPUTE: {**_UNSUPPORTED_BOTH, **_UNSUPPORTED_DATA},
    TRAIN: {
        **_UNSUPPORTED_BOTH,
        "optim": _OPTIM,
        "deepspeed": Unsupported("DeepSpeed is not supported; kto-train shards with FSDP2: fsdp: true (or accelerate launch --use_fsdp)", (None, "", False)),
        "fsdp_config": Unsupported(
            "kto-train's fsdp takes no settings: FSDP2 full sharding, each decoder layer wrapped, parameters resharded after the forward "
            "(accelerate launch's FSDP settings still apply); leave fsdp_config out",
            # What transformers 5's TrainingArguments(fsdp=...).to_dict() fills in: the same as ours.
            (None, {}, {"reshard_after_forward": True, "min_num_params": 0, "xla": False, "xla_fsdp_v2": False, "xla_fsdp_grad_ckpt": False}),
        ),
        "load_best_model_at_end": Unsupported(
            "final/ is the last step's model, never the best checkpoint's; eval losses per step are in OUT/metrics.jsonl", (None, False)
        ),
        "ignore_data_skip": Unsupported(
            "a resumed run continues the data where it stopped, as ignore_data_skip: false",
            (None, False),
            short="a resumed run continues the data where it stopped",
        ),
        "dataloader_drop_last": Unsupported("kto-train drops no row: an epoch's last step may be short", (None, False)),
        "group_by_length": Unsupported("batches follow the cache's seeded order; kto-train does not group rows by length", (None, False)),
        "lora_task_type": Unsupported("kto-train trains causal language models (CAUSAL_LM) only", ("CAUSAL_LM", None)),
        "use_dora": Unsupported("DoRA is not supported; kto-train trains plain LoRA (lora_r, lora_alpha, lora_dropout)", (None, False)),
        "use_rslora": Unsupported(
            "rsLoRA is not supported; the LoRA scale here is lora_alpha / lora_r: for rsLoRA's lora_alpha / √lora_r give lora_alpha × √lora_r as lora_alpha",
            (None, False),
        ),
        "lora_modules_to_save": Unsupported("only the LoRA adapters train; to train every weight, turn LoRA off (lora_r 0)", (None, [])),
        # Evaluating (do_train: false), it is read as --model with model_name_or_path as --base-model
        # (config_adapters.adapters_in_force); training, refused with this.
        "adapter_name_or_path": Unsupported(
            "kto-train starts fresh adapters on model; to train on from these, merge them into the model first (llamafactory-cli export) "
            "and give that as model_name_or_path; to evaluate them, write do_train: false (with an eval set)"
        ),
        **_LLAMA_FACTORY_LORA,
        **_LLAMA_FACTORY_TRAINING,
    },
}
