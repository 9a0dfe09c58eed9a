"""Loading: the tokenizer and the causal LM of a `ModelSource`, and THE model-loading sequence
every phase scores through (`load_completion_logps`).

kto-precompute's reference numbers, kto-train's policy and `kto-inspect score` all load here, so
the same --model gives the same model: the weight files are checked against config.json first
(weights_check.py), a GGUF file is parsed once (gguf_once.py), transformers' failures become one
line naming the flag, and the EOS lent as a pad token for padding is taken back before a
tokenizer is saved (`tokenizer_as_given`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, exception_line
from ..files import read_json
from .gguf_once import gguf_loads
from .library_bars import library_bars_off
from .load_options import attention_refusal, attention_unsupported
from .weights_check import refuse_missing_weights

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .logprob import CompletionLogps
    from .sources import ModelSource


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False, flag: str = "--model") -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        with gguf_loads(source.gguf_file):
            tok = AutoTokenizer.from_pretrained(source.directory, trust_remote_code=trust_remote_code, **source.load_kwargs)
    except Exception as exc:
        # transformers parses tokenizer.json and friends itself; a RecursionError or a JSON error
        # from there is better told as the file that causes it.
        raise _unreadable_json_in(source.directory) or InputError(
            f"{flag} {source.directory}: cannot load tokenizer ({exception_line(exc)}){_custom_code_hint(exc)}"
        ) from None
    if tok.pad_token_id is None:
        # Padding positions are masked out everywhere; any id works, EOS is the usual choice. It
        # is lent for padding only: `tokenizer_as_given` takes it back before the tokenizer is saved.
        tok.pad_token = tok.eos_token
        setattr(tok, LENT_PAD, True)
    return tok


LENT_PAD = "kto_lent_pad"
"""Set on a tokenizer that `load_tokenizer` lent EOS as its pad token."""


def tokenizer_as_given(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tok` without the pad token `load_tokenizer` lent it, as its files give it: what is saved
    beside trained weights. Saved with the lent pad, its tokenizer_config.json would gain
    `"pad_token": EOS` while config.json keeps pad_token_id null, and a collator that masks pad
    labels downstream would mask every EOS. `tok` is changed in place and returned."""
    if tok.__dict__.pop(LENT_PAD, False):
        tok.pad_token = None
    return tok


def _unreadable_json_in(directory: Path) -> InputError | None:
    """`PATH: unreadable (why)` for the first JSON file in `directory` that does not parse."""
    for path in sorted(Path(directory).glob("*.json")):
        try:
            read_json(path)
        except InputError as exc:
            return exc
    return None


def load_causal_lm(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    quantization_config: Any = None,
    flag: str = "--model",
) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if device_map:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    refuse_missing_weights(source, trust_remote_code, flag)
    try:
        with gguf_loads(source.gguf_file, last=True), library_bars_off(only_off_terminal=True):
            model = AutoModelForCausalLM.from_pretrained(source.directory, **kwargs, **source.load_kwargs)
    except Exception as exc:
        unsupported = attention_unsupported(exc)
        if unsupported is not None:
            raise attention_refusal(attn_implementation, unsupported) from exc
        raise InputError(f"{flag} {source.directory}: cannot load model ({exception_line(exc)}){_custom_code_hint(exc)}") from exc
    # PEFT names an adapter's base after this (adapter_config.json's base_model_name_or_path):
    # the hub id or the path as given, not the absolute folder it was loaded from.
    model.name_or_path = source.peft_base
    if source.gguf_file:
        # GGUF weights are dequantized on load; the quantizer object only gets in the way of
        # training and of save_pretrained.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def _custom_code_hint(exc: BaseException) -> str:
    """What transformers' refusal of a folder's own code leaves out: the flag that allows it here."""
    if "contains custom code" not in str(exc):
        return ""
    return "; --trust-remote-code runs that code: give it only for a folder whose code you have read and trust"


def load_completion_logps(
    source: ModelSource,
    *,
    dtype: torch.dtype,
    device: torch.device | str | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    chunk_size: int = 1024,
    training: bool = False,
    quantization_config: Any = None,
    adjust: Callable[[PreTrainedModel], torch.nn.Module] | None = None,
) -> CompletionLogps:
    """THE model-loading sequence of every phase: the causal LM from `source`, then `adjust(lm)`,
    which returns the model to score with (kto-train turns dropout off and checkpointing on, and
    puts LoRA adapters on; `kto-inspect score` puts a run's adapters on), onto `device` unless
    `device_map` placed it (kto-train leaves that to accelerate), wrapped in `CompletionLogps` in
    train or eval mode."""
    from .logprob import CompletionLogps

    lm = load_causal_lm(
        source,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        device_map=device_map,
        quantization_config=quantization_config,
    )
    if adjust is not None:
        lm = adjust(lm)
    if device is not None and device_map is None:
        lm = lm.to(device)
    return CompletionLogps(lm.train(training), chunk_size=chunk_size)
