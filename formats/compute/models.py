"""Model sources: load a tokenizer or a causal LM from a local dir, a `.gguf` file or a hub id,
and fingerprint them cheaply.

Both phases load models through here, so "the same `--model`" means the same thing to
kto-precompute, kto-train and kto-inspect.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import InputError, exception_line
from ..files import read_json, regular_file, sha256_file
from ..runrecord import refuse_run_dir_as_model
from .gguf_once import gguf_loads, refuse_without_gguf

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .logprob import CompletionLogps

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from. `directory` is a local dir; `gguf_file` a file name inside it."""

    directory: Path
    gguf_file: str | None = None
    hub_id: str | None = None
    given: str = ""
    """`--model` as the user wrote it (a relative path stays relative)."""
    skeleton: Callable[[], PreTrainedModel] | None = field(default=None, compare=False, repr=False)
    """Builds the model on the meta device, once (`checked_source` sets it): the pre-flight's
    checks and the model's load share it, rather than each building its own."""

    @property
    def name(self) -> str:
        """How saved files name this model: the hub id, else the path as given; never the HF
        cache's snapshot folder, which means nothing on another machine."""
        return self.hub_id or self.given or str(self.directory / (self.gguf_file or ""))

    @property
    def peft_base(self) -> str:
        """What an adapter's adapter_config.json names as its base (PEFT's base_model_name_or_path):
        `name`, except for a local GGUF file: the folder that holds it, as given, which is what
        transformers loads a GGUF model from (with `gguf_file=`); PEFT passes that argument on
        (`AutoPeftModelForCausalLM.from_pretrained(adapter_dir, gguf_file=...)`), and cannot
        load a path to the file itself ("Repo id must be in the form ...")."""
        if not self.gguf_file or self.hub_id:
            return self.name
        given = Path(self.given).expanduser() if self.given else self.directory / self.gguf_file  # `~` means nothing to peft
        folder = given.parent if given.suffix == ".gguf" else given
        # A bare file name's folder is ".": the loader's working directory, wherever it runs.
        return str(self.directory) if str(folder) in ("", ".") else str(folder)

    @property
    def load_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def hub_id_shaped(spec: str) -> bool:
    """`ORG/NAME`, not written as a path (./, /, ~): what `resolve_source` fetches from the hub
    when no local path of that name exists."""
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


def resolve_source(spec: str, flag: str = "--model") -> ModelSource:
    """A local directory, a local `.gguf` file, or a hub id (downloaded to the HF cache)."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        _refuse_gguf_beside_hf_files(path, spec, flag)
        refuse_without_gguf(spec, flag)
        # The link's own folder and name, not its target's: opening it follows the link, and
        # the adapter's base and the card's load line then name what the user named.
        return ModelSource(path.absolute().parent, gguf_file=path.name, given=spec)
    if path.is_dir():
        refuse_run_dir_as_model(path, spec, flag)
        if not (path / "config.json").is_file() and not list(path.glob("*.gguf")):
            raise _no_config(path, spec, flag)
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            refuse_without_gguf(f"{spec.rstrip('/')}/{ggufs[0]}", flag)
            return ModelSource(path.resolve(), gguf_file=ggufs[0], given=spec)
        if not (path / "config.json").is_file():
            raise InputError(
                f"{flag} {spec}: {len(ggufs)} .gguf files ({', '.join(ggufs[:3])}{', ...' if len(ggufs) > 3 else ''}) and no config.json: give the one to load, {flag} {spec.rstrip('/')}/{ggufs[0]}"
            )
        _refuse_model_with_adapter(path, spec, flag)
        _refuse_links_out(path, spec, flag)
        return ModelSource(path.resolve(), given=spec)
    if path.exists():
        raise InputError(f"{flag} {spec}: not a model directory or a .gguf file")
    if not hub_id_shaped(spec):
        raise InputError(f"{flag} {spec}: no such file or directory")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(spec)
    except Exception as exc:  # network, auth, missing repo: all one line for the user
        raise InputError(f"{flag} {spec}: cannot fetch from the hub ({exception_line(exc)})") from exc
    _refuse_model_with_adapter(Path(local), spec, flag)
    _refuse_links_out(Path(local), spec, flag)
    return ModelSource(Path(local), hub_id=spec, given=spec)


# What transformers reads from a model folder: its tokenizer, template, config and weight files.
def _refuse_links_out(path: Path, spec: str, flag: str) -> None:
    """A file or subfolder of the model folder that is a link out of it: what it points at was
    read as the folder's own (a template linked to a secret began every prompt, and was copied
    into the cache, run/final and a hub upload), at any depth (transformers reads and saves
    additional_chat_templates/). Weight files may link anywhere (a huggingface_hub local_dir,
    git-annex, DVC): they are hashed and loaded, never copied. The Hugging Face cache links
    snapshots/REV/FILE to ../../blobs/HASH: there the boundary is the repo folder (models--ORG--NAME)."""
    folder = path.resolve()
    repo = folder.parent.parent
    boundary = repo if folder.parent.name == "snapshots" and repo.name.startswith("models--") else folder
    for root, dirs, files in os.walk(path):
        for name in sorted([*dirs, *files]):
            entry = Path(root) / name
            if entry.is_symlink() and entry.suffix not in WEIGHT_SUFFIXES and not Path(os.path.realpath(entry)).is_relative_to(boundary):
                raise InputError(
                    f"{flag} {spec}: {entry.relative_to(path)} is a symbolic link to {os.readlink(entry)}, outside the model folder; "
                    "copy it into the folder instead of linking it"
                )


def _refuse_gguf_beside_hf_files(path: Path, spec: str, flag: str) -> None:
    """A .gguf beside a tokenizer.json (llama.cpp's converter writes it into the model's own
    folder): transformers 5 reads that file instead of the GGUF's own tokenizer, which then came
    out without its special tokens or chat template (no EOS: completions lost it without a word,
    and kto-train failed on a pad of None). A stub config.json (GGUF repos on the hub ship one),
    tokenizer_config.json or vocab files alone did not change the tokenizer."""
    folder = path.absolute().parent
    if (folder / "tokenizer.json").is_file():
        weights = any(folder.glob("*.safetensors")) or (folder / "pytorch_model.bin").is_file()
        either = f"give that folder itself as {flag} (its Hugging Face model), or " if weights else ""
        raise InputError(
            f"{flag} {spec}: its folder also holds tokenizer.json, which transformers would read instead of the GGUF's own "
            f"tokenizer (losing its special tokens and chat template); {either}move the .gguf file into a folder of its own"
        )


def _refuse_model_with_adapter(path: Path, spec: str, flag: str) -> None:
    """A folder with both config.json and adapter_config.json: transformers' from_pretrained
    loads it as the adapter on top of the adapter's base_model_name_or_path (a path resolved
    from the working directory, or a hub id), never the folder's own weights, so the numbers
    would belong to another model than the one the cache or run fingerprints."""
    if not (path / "config.json").is_file() or not (path / "adapter_config.json").is_file():
        return
    base = _adapter_base(path / "adapter_config.json")
    raise InputError(
        f"{flag} {spec}: holds a model (config.json) and a LoRA adapter (adapter_config.json); transformers would load the adapter on "
        f"{base}, not this folder's weights; move adapter_config.json and adapter_model.* out of it, or give the adapter merged into its base"
    )


def _adapter_base(adapter_config: Path) -> str:
    """The base model an adapter_config.json names, for a message; "its base model" when it
    names none or cannot be read."""
    try:
        return read_json(adapter_config).get("base_model_name_or_path") or "its base model"
    except (InputError, AttributeError):
        return "its base model"


def _no_config(path: Path, spec: str, flag: str) -> InputError:
    """A folder without config.json; a LoRA adapter folder (what LLaMA-Factory's and TRL's SFT
    runs save) and a kto-train FSDP checkpoint are told apart, with how to make a model of it."""
    adapter = path / "adapter_config.json"
    if is_sharded_checkpoint(path):
        return InputError(
            f"{flag} {spec}: an FSDP checkpoint (its weights are sharded in {SHARDED_DIR}/*.distcp), not a model directory; "
            "give RUN/final, or a checkpoint of a run without --fsdp"
        )
    if not adapter.is_file():
        return InputError(f"{flag} {spec}: directory has no config.json")
    base = _adapter_base(adapter)
    return InputError(
        f"{flag} {spec}: a LoRA adapter folder (adapter_config.json), not a model; merge it into {base} first "
        f"(peft: PeftModel.from_pretrained(base, '{spec}').merge_and_unload().save_pretrained(DIR), with the tokenizer) and give DIR"
    )


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


def checked_source(source: ModelSource, *, trust_remote_code: bool = False, flag: str = "--model") -> ModelSource:
    """The commands' pre-flight of --model, before --out is touched: `source` with its cached
    `skeleton`, once its weight files are found to hold what config.json describes
    (_refuse_missing_weights: the layer count from the headers first, then the names on that
    skeleton). Loading the returned source checks them again on the same skeleton."""
    checked = replace(source, skeleton=functools.cache(lambda: model_skeleton(source, trust_remote_code=trust_remote_code, flag=flag)))
    _refuse_missing_weights(checked, trust_remote_code, flag)
    return checked


def model_skeleton(source: ModelSource, *, trust_remote_code: bool = False, flag: str = "--model") -> PreTrainedModel:
    """`source`'s model built from its config on the meta device: its modules and config, no
    weight read, for the checks made before --out is touched (LoRA targets, prefix sharing). A
    GGUF file's parse is kept for the model's load (gguf_once). The commands build it through
    `checked_source`'s `skeleton`, once."""
    try:
        return _on_meta(source, trust_remote_code)
    except Exception as exc:
        raise InputError(f"{flag} {source.name}: cannot build the model from its config ({exception_line(exc)})") from exc


def _on_meta(source: ModelSource, trust_remote_code: bool, **kwargs: Any) -> PreTrainedModel:
    """AutoModelForCausalLM.from_config of `source`'s config on the meta device (`kwargs` to it)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with gguf_loads(source.gguf_file):  # the model's load reuses this parse of a GGUF file
        config = AutoConfig.from_pretrained(source.directory, trust_remote_code=trust_remote_code, **source.load_kwargs)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kwargs)


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
    _refuse_missing_weights(source, trust_remote_code, flag)
    try:
        with gguf_loads(source.gguf_file, last=True):
            model = AutoModelForCausalLM.from_pretrained(source.directory, **kwargs, **source.load_kwargs)
    except Exception as exc:
        unsupported = _attention_unsupported(exc)
        if unsupported is not None:
            raise _attention_refusal(attn_implementation, unsupported) from exc
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


def _refuse_missing_weights(source: ModelSource, trust_remote_code: bool, flag: str) -> None:
    """Refuse a config.json that describes parameters the weight files do not hold: from_pretrained
    fills them with random values and says so only in a table (a config claiming 3 layers over a
    2-layer file scored with layer 2 random; 50,000 claimed layers grew to a MemoryError). The
    layer count is read first, from config.json and the headers (_refuse_missing_layers): the
    meta-device skeleton of 50,000 layers alone took 200 s and 4.5 GB. Then the names are compared
    on the skeleton (`source.skeleton` where the pre-flight made one), before any weight is
    allocated. Skipped where they are not comparable: a GGUF file, pickled .bin weights, or files
    whose names transformers renames on load (another prefix, pre-quantized or legacy layouts):
    a file name the skeleton lacks."""
    held = None if source.gguf_file else _safetensors_names(source.directory)
    if not held:
        return
    _refuse_missing_layers(source, held, flag)
    try:
        skeleton = source.skeleton() if source.skeleton else _on_meta(source, trust_remote_code)
    except Exception:  # the load that follows says why, in its own words
        return
    missing = _missing_parameters(skeleton, held)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise InputError(
            f"{flag} {source.name}: config.json describes weights that its weight files do not hold ({len(missing)} missing: {shown}); "
            "transformers would fill them with random values"
        )


# `<prefix>.<i>.` in a tensor name: a numbered stack (layers, GPT-2's `h`, experts, a vision
# tower's layers); nine digits at most, so a hostile header cannot make int() refuse the text.
_NUMBERED = re.compile(r"(?:^|\.)(\d{1,9})\.")


def _refuse_missing_layers(source: ModelSource, held: set[str], flag: str) -> None:
    """Refuse a config.json that claims more layers (num_hidden_layers, or text_config's for a
    multimodal config) than the weight files `held` (their tensor names) number, from names
    alone, before any skeleton is built. Only where the names number a `layers.<i>` stack, and
    against the largest numbered stack of any name (GPT-2's `h.<i>`, a vision tower's layers;
    not an MoE's `experts.<j>`): a claim that no stack reaches. Anything less clear is left to the skeleton's names."""
    claimed, key = _claimed_layers(source.directory)
    stacks: dict[str, int] = {}
    for name in held:
        for found in _NUMBERED.finditer(name):
            prefix = name[: found.start()]
            if prefix.rsplit(".", 1)[-1] != "experts":  # an MoE's expert index is no layer count
                stacks[prefix] = max(stacks.get(prefix, 0), int(found.group(1)) + 1)
    layers = {prefix: n for prefix, n in stacks.items() if prefix == "layers" or prefix.endswith(".layers")}
    if claimed is None or not layers or claimed <= max(stacks.values()):
        return
    prefix, n = max(layers.items(), key=lambda item: (item[1], item[0]))
    raise InputError(
        f"{flag} {source.name}: config.json claims {claimed:,} layers ({key}) but its weight files hold {n:,} "
        f"({prefix}.0 to {prefix}.{n - 1}); transformers would fill the others with random values"
    )


def _claimed_layers(directory: Path) -> tuple[int | None, str]:
    """The layer count config.json in `directory` claims, and the key that says it:
    num_hidden_layers, else text_config's (multimodal configs); None where neither is a positive
    int or the file does not read as a JSON object (AutoConfig says why)."""
    try:
        config = read_json(directory / "config.json")
    except InputError:
        return None, ""
    text = config.get("text_config") if isinstance(config, dict) else None
    for key, where in (("num_hidden_layers", config), ("text_config.num_hidden_layers", text)):
        value = where.get("num_hidden_layers") if isinstance(where, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None, ""


def _missing_parameters(skeleton: torch.nn.Module, held: set[str]) -> list[str]:
    """The parameter names of `skeleton` that `held` (a checkpoint's tensor names) lacks, sorted.
    Tied parameters are one object under several names: any one of them held is enough (a tied
    head is saved once, as the embedding). [] when the names the skeleton does not have could be
    the lacking ones renamed (another prefix, a legacy layout: transformers maps them on load):
    at least as many of them as parameters lacking. One junk tensor beside a file that lacks a
    layer's nine is no renaming: it had switched the whole check off."""
    # Only names the skeleton lacks are matched against these: GPT-2's "attn.bias" (its old
    # mask buffer) also matches its c_attn.bias, a parameter that must be held.
    unexpected = getattr(skeleton, "_keys_to_ignore_on_load_unexpected", None) or []
    unknown = [k for k in held - skeleton.state_dict().keys() if not any(re.search(p, k) for p in unexpected)]
    names: dict[int, list[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    ignored = getattr(skeleton, "_keys_to_ignore_on_load_missing", None) or []
    lacking = [group for group in names.values() if not held.intersection(group) and not all(any(re.search(p, n) for p in ignored) for n in group)]
    if len(unknown) >= len(lacking):
        return []
    return sorted(n for group in lacking for n in group if not any(re.search(p, n) for p in ignored))


def _safetensors_names(directory: Path) -> set[str] | None:
    """The tensor names of the safetensors weights transformers loads from `directory`
    (model.safetensors, else the files model.safetensors.index.json names), read from their headers;
    None where there are none or a header cannot be read (the load says why)."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():  # transformers' own order: the single file first
        files = {"model.safetensors"}
    elif index.is_file():
        content = read_json(index)
        weight_map = content.get("weight_map") if isinstance(content, dict) else None
        files = set(weight_map.values()) if isinstance(weight_map, dict) and all(isinstance(f, str) for f in weight_map.values()) else set()
    else:
        files = set()
    names: set[str] = set()
    for file in sorted(files):
        if Path(file).name != file or not (directory / file).is_file():
            return None
        header = _safetensors_header(regular_file(directory / file))
        if header is None:
            return None
        names |= header.keys() - {"__metadata__"}
    return names or None


def _safetensors_header(path: Path) -> dict | None:
    """The parsed JSON header of the safetensors file `path`, or None when it is not one."""
    with open(path, "rb") as f:
        raw = _header_bytes(f, path.stat().st_size, 100 << 20)  # safetensors' own header limit: 100 MB
    try:
        header = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _header_bytes(f: BinaryIO, size: int, limit: int | None = None) -> bytes | None:
    """The JSON header of the safetensors file open as `f` (at its start), `size` bytes long: its
    8-byte little-endian length, then that many bytes. None where the length does not fit the
    file (or `limit`)."""
    head = f.read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    if not 0 < n <= min(size - 8, limit if limit is not None else size):
        return None
    return f.read(n)


def check_attention_implementation(source: ModelSource, attn_implementation: str, *, trust_remote_code: bool = False) -> None:
    """Before --out is touched: transformers refuses sdpa at load for some models (Gemma 2,
    GptOss, Bloom in 5.25), and building the model from its config on the meta device meets the
    same refusal, said as the flag to give. Any other failure is left to the load (flash kernels
    are checked there, on the device they run on). First the name itself: one transformers
    does not know (`abc`, '') was refused only at the load, after --out was claimed. Not with
    --trust-remote-code: a folder's own code may register its attention name when it loads."""
    if not trust_remote_code:
        check_attention_name(attn_implementation)
    if attn_implementation != "sdpa":
        return
    try:
        _on_meta(source, trust_remote_code, attn_implementation=attn_implementation)
    except Exception as exc:
        unsupported = _attention_unsupported(exc)
        if unsupported is not None:
            raise _attention_refusal(attn_implementation, unsupported) from exc


def check_attention_name(attn_implementation: str) -> None:
    """A one-line refusal of a name the installed transformers would refuse at load, whatever
    the model: not eager nor one of its AttentionInterface's keys (sdpa, flash_attention_2/3/4,
    flex_attention, paged|eager, and any registered), nor such a key behind the `paged|` prefix
    it still takes, nor a kernels-hub repo `org/repo[@rev][:name]` (its is_kernel pattern; the
    kernel itself is fetched at load). Read from transformers, not listed here, so that a name
    a newer release adds passes."""
    from transformers.integrations.hub_kernels import is_kernel
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if attn_implementation in known or attn_implementation.removeprefix("paged|") in known or is_kernel(attn_implementation):
        return
    raise InputError(
        f"--attn-implementation {attn_implementation!r}: not an attention implementation; give one of {', '.join(known)}, or a kernels hub repo ORG/NAME"
    )


def check_device_map(device_map: str | None) -> None:
    """Before --out is claimed, --device-map as transformers reads a text one at load: a strategy
    or a torch device name (`abc` failed at the load, named as the model's failure)."""
    if device_map is None or device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return
    import torch

    try:
        torch.device(device_map)
    except (RuntimeError, ValueError):
        raise InputError(f"--device-map {device_map!r}: give auto, balanced, balanced_low_0, sequential or a device (cpu, cuda:0)") from None


def _attention_refusal(attn_implementation: str, model: str) -> InputError:
    others = "eager" if attn_implementation == "sdpa" else "sdpa or eager"
    return InputError(f"--attn-implementation {attn_implementation}: {model} does not support it; give --attn-implementation {others}")


def _attention_unsupported(exc: Exception) -> str | None:
    """The model class named by transformers' refusal of an attention implementation at load
    (`Gemma2ForCausalLM does not support an attention implementation through
    torch.nn.functional.scaled_dot_product_attention yet ...`, `... does not support Flash
    Attention 2 yet ...`, `... through torch's flex_attention`), else None. Its text ends in
    an example that loads whisper-tiny: nothing the user gave, so the flag is named instead."""
    found = re.match(r"(\w+) does not support (an attention implementation|Flash Attention)", str(exc)) if isinstance(exc, ValueError) else None
    return found.group(1) if found else None


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


SHARDED_DIR = "sharded"
"""The folder of a kto-train FSDP checkpoint that holds its torch.distributed.checkpoint (DCP)
shards (train/sharding.py writes it): {"model": the state dict of CompletionLogps, keys
"lm.<the policy's key>", "optimizer": …}; one .distcp file per process, and .metadata."""
SHARDED_MODEL = "model.lm."  # how DCP flattens the policy's keys there


def is_sharded_checkpoint(path: Path | None) -> bool:
    return path is not None and (Path(path) / SHARDED_DIR).is_dir()


def load_sharded_weights(module: torch.nn.Module, checkpoint: Path, flag: str = "--model") -> torch.nn.Module:
    """`module` (the policy as kto-train built it: the HF model, or a PeftModel on it) with its
    weights read from FSDP checkpoint `checkpoint`'s DCP shards, in this one process: DCP reads a
    checkpoint saved by N processes into whole tensors without a process group (`no_dist`),
    converting dtypes as it copies. The checkpoint must hold every trainable parameter of
    `module` (every weight of a full fine-tune; the adapters under LoRA, the only ones kto-train
    saves) and nothing that `module` lacks (another model's checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    where = Path(checkpoint) / SHARDED_DIR
    try:
        saved = dcp.FileSystemReader(where).read_metadata().state_dict_metadata
    except Exception as exc:  # a missing or damaged .metadata: one line, whatever DCP raises
        raise InputError(f"{flag} {checkpoint}: {SHARDED_DIR}/.metadata unreadable ({type(exc).__name__})") from None
    held = {k.removeprefix(SHARDED_MODEL) for k in saved if k.startswith(SHARDED_MODEL)}
    own = module.state_dict()
    wanted = {name for name, p in module.named_parameters() if p.requires_grad}  # a tied weight once
    if foreign := sorted(held - own.keys()):
        raise InputError(f"{flag} {checkpoint}: its sharded weights hold {foreign[0]}, which the model it is loaded onto lacks; is that its base model?")
    if missing := sorted(wanted - held):
        raise InputError(f"{flag} {checkpoint}: its sharded weights lack {missing[0]}")
    try:
        dcp.load({"model": {f"lm.{k}": own[k] for k in held}}, checkpoint_id=where, no_dist=True)  # into own: the module's tensors
    except (CheckpointException, RuntimeError, ValueError) as exc:  # CheckpointException is a BaseException
        raise InputError(f"{flag} {checkpoint}: cannot read its sharded weights ({str(exc).strip().splitlines()[-1]})") from None
    return module


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Sampled blocks of tensor data: the safetensors header alone (names, dtypes, shapes) is the same
# for every checkpoint of one architecture, so two fine-tunes would share an identity. Reading
# SAMPLE_BLOCKS evenly spaced blocks of the data (4 MiB a file) tells checkpoints apart in
# milliseconds: training moves every weight, so every block changes.
SAMPLE_BLOCKS, SAMPLE_BYTES = 64, 64 * 1024
# Tensors up to this size are hashed whole: norms and biases, which the sampled blocks of a large
# file almost never reach (an attack on a killed kto-precompute edited one RMSNorm weight in
# place: the identity stayed, and the rerun kept the shards scored with the old weights). About
# 0.5 MB a file for an 8B Llama's norms.
SMALL_TENSOR_BYTES = 1 << 20
# Neither reaches a few rows edited inside a large tensor (a fine-tune that trained only some
# token embeddings, merged): 186 of the 291 embedding rows a tiny model's data used lay between
# the sampled blocks, and a cache scored with the old rows passed for the new model's. So the
# whole file is hashed too (`sha256`): 0.35 s for SmolLM2-135M's 538 MB here (1.5 GB/s, one
# thread, SHA-NI); the files of a sharded model are hashed in parallel. The header, sampled and
# small-tensor hashes stay: identities recorded before `sha256` carry only them (same_model).


def _safetensors_identity(path: Path) -> dict:
    """Size, sha256 of the JSON header, sha256 of sampled blocks of the tensor data, sha256 of
    every small tensor whole (names and bytes, in file order), and sha256 of the whole file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = _header_bytes(f, size)
        if header is None:
            raise InputError(f"{path}: cannot load model (not a valid safetensors file)")
        data_start, data_len = 8 + len(header), size - 8 - len(header)
        samples = hashlib.sha256()
        span = max(data_len - SAMPLE_BYTES, 0)
        for i in range(SAMPLE_BLOCKS):
            f.seek(data_start + span * i // (SAMPLE_BLOCKS - 1))
            samples.update(f.read(SAMPLE_BYTES))
        small = hashlib.sha256()
        for name, begin, end in _small_tensors(header, path, data_len):
            f.seek(data_start + begin)
            small.update(f"{name}\0{end - begin}\0".encode())
            small.update(f.read(end - begin))
    return {
        "size": size,
        "header_sha256": _sha256(header),
        "sampled_sha256": samples.hexdigest(),
        "small_tensors_sha256": small.hexdigest(),
        "sha256": sha256_file(path),
    }


def _small_tensors(header: bytes, path: Path, data_len: int) -> list[tuple[str, int, int]]:
    """(name, begin, end) of the tensors of at most SMALL_TENSOR_BYTES, by offset."""
    try:
        entries = json.loads(header)
    except (ValueError, RecursionError):
        raise InputError(f"{path}: cannot load model (its safetensors header is not JSON)") from None
    spans = []
    for name, entry in entries.items() if isinstance(entries, dict) else ():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets):
            spans.append((name, offsets[0], offsets[1]))
    spans.sort(key=lambda s: (s[1], s[2], s[0]))
    if why := _bad_offsets(spans, data_len):
        raise InputError(f"{path}: cannot load model (its safetensors header is invalid: {why})")
    return [s for s in spans if s[2] - s[1] <= SMALL_TENSOR_BYTES]


def _bad_offsets(spans: list[tuple[str, int, int]], data_len: int) -> str | None:
    """Why the (name, begin, end) `spans`, sorted by begin, are not tensors of `data_len` bytes of
    data, else None. Overlapping tensors made the identity read far more than the file holds
    (20,000 entries of 1 MiB at [0, 1 MiB]: 20 GB read from 2.5 MB, 37 s); safetensors refuses
    such a file at load, but the identity is taken first."""
    previous = None
    for name, begin, end in spans:
        if begin < 0:
            return f"tensor {name} begins at byte {begin}"
        if end < begin:
            return f"tensor {name} ends at byte {end}, before it begins"
        if end > data_len:
            return f"tensor {name} ends at byte {end}, past the {data_len} bytes of data"
        if previous is not None and begin < previous[2]:
            return f"tensors {previous[0]} and {name} overlap"
        previous = (name, begin, end) if end > begin or previous is None else previous
    return None


def model_identity(source: ModelSource) -> dict:
    """Config hash, and each weight file's identity: for safetensors, size, header hash, sampled
    blocks, small tensors and the whole file's sha256 (see SMALL_TENSOR_BYTES); other formats
    are hashed whole. Paths are left out, so moving a model does not change its identity.
    """
    identity: dict = {}
    config = source.directory / "config.json"
    if config.is_file():
        identity["config"] = _sha256(json.dumps(read_json(config), sort_keys=True).encode())
    names = [source.gguf_file] if source.gguf_file else sorted(p.name for p in source.directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    # hashlib releases the GIL while it hashes: the files of a sharded model take one file's time.
    with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as pool:
        identity["weights"] = dict(zip(names, pool.map(_weight_identity, (source.directory / name for name in names)), strict=True))
    if source.hub_id:
        identity["hub_revision"] = source.directory.name  # snapshot dir name is the commit hash
    return identity


def _weight_identity(path: Path) -> dict:
    regular_file(path)  # a FIFO or /dev/zero would be hashed forever, in a thread Ctrl-C cannot stop
    if path.suffix == ".safetensors":
        return _safetensors_identity(path)
    # No header to hash: .bin/.pt pickles and GGUF files are hashed whole only.
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _template_text(template: str | dict | None) -> str:
    if isinstance(template, dict):
        return json.dumps(template, sort_keys=True)
    return template or ""


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """Hashes of each part of a tokenizer that decides token ids, kept apart so a mismatch can
    say *what* differs: vocabulary, special tokens, chat template, and the pipeline itself."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    special["bos_token_id"] = str(tokenizer.bos_token_id)
    special["eos_token_id"] = str(tokenizer.eos_token_id)
    parts = {
        "vocabulary": _sha256(json.dumps(vocab).encode()),
        "special_tokens": _sha256(json.dumps(special, sort_keys=True).encode()),
        # Named templates (an additional_chat_templates/ folder, a list in tokenizer_config.json)
        # come as a dict of name -> text: hashed whole, as JSON.
        "chat_template": _sha256(_template_text(tokenizer.chat_template).encode()),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        pipeline = json.loads(backend.to_str())
        # Padding/truncation settings are runtime state, not part of what ids a text maps to.
        pipeline.pop("padding", None)
        pipeline.pop("truncation", None)
        parts["pipeline"] = _sha256(json.dumps(pipeline, sort_keys=True).encode())
    return parts


def diff_identity(expected: dict, actual: dict) -> list[str]:
    """Names of the parts that differ (missing on either side counts as different)."""
    return sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))


class ChatTemplateDiffers(InputError):
    """require_cache_tokenizer's refusal of a tokenizer that differs from the cache's in its chat
    template only. It carries the tokenizer and its identity, so that kto-train, which takes such
    a model with a note (train/setup.py check_tokenizer), neither loads it again nor recomputes the
    identity (seconds each)."""

    def __init__(self, message: str, tokenizer: PreTrainedTokenizerBase, identity: dict) -> None:
        super().__init__(message)
        self.tokenizer, self.identity = tokenizer, identity


def require_cache_tokenizer(tokenizer: PreTrainedTokenizerBase, cache_identity: dict, model_flag: str) -> None:
    """Refuse a model whose tokenizer is not the one the cache's token ids were made with."""
    identity = tokenizer_identity(tokenizer)
    differs = diff_identity(cache_identity, identity)
    if differs == ["chat_template"]:  # the ids are unaffected: the words would be wrong
        raise ChatTemplateDiffers(
            f"--model {model_flag}: its chat template is not the one the cache's prompts were rendered with "
            "(the token ids do not depend on it, the format the model answers in does). Use the model the cache was made with, "
            "or a kto-train output (final/ carries the cache's template).",
            tokenizer,
            identity,
        )
    if differs:
        raise InputError(
            f"--model {model_flag}: tokenizer differs from the cache's ({', '.join(differs)}); "
            "the cached token ids would mean other words. Use the model the cache was made with."
        )


# kto-train's record of tokenizers already found equal to a cache's (in the cache directory, as
# the shard record `.verified.json`): computing `tokenizer_identity` serialises and re-parses the
# whole tokenizer pipeline (about 3 s for a 49k vocabulary on a busy CPU), on every start.
TOKENIZER_CHECK_NAME = ".tokenizer-checked.json"
_TOKENIZER_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken", ".py")


def tokenizer_files_digest(source: ModelSource) -> str | None:
    """sha256 of the files a tokenizer is loaded from (names and bytes) and of the library
    versions that turn them into one; None for a GGUF file, whose tokenizer is in the weights."""
    if source.gguf_file:
        return None
    from importlib.metadata import version  # not `import transformers`: 1-3 s that loading the model pays anyway

    h = hashlib.sha256(f"transformers {version('transformers')} tokenizers {version('tokenizers')}".encode())
    for path in sorted(source.directory.iterdir()):
        if path.suffix in _TOKENIZER_SUFFIXES and path.is_file():
            h.update(f"{path.name}\0{sha256_file(path)}\0".encode())
    return h.hexdigest()


def check_cache_tokenizer(
    source: ModelSource, cache_identity: dict, model_flag: str, cache_dir: Path, *, trust_remote_code: bool = False
) -> tuple[int, object | None]:
    """`require_cache_tokenizer` for `source`'s tokenizer, remembered in `cache_dir`.

    A tokenizer loaded from the same files by the same library versions was already found
    equal to this cache's: a second run on the cache neither compares nor even loads it, and
    takes the pad id from the record. Returns (pad_token_id, the tokenizer if it was loaded).
    A read-only cache is simply checked every time.
    """
    digest = tokenizer_files_digest(source)
    key = f"{digest}:{_sha256(json.dumps(cache_identity, sort_keys=True).encode())}"
    path = Path(cache_dir) / TOKENIZER_CHECK_NAME
    try:
        record = read_json(path) if path.exists() else {}
        record = record if isinstance(record, dict) else {}
    except InputError:  # only a memo: unreadable, it is rebuilt
        record = {}
    remembered = record.get(key) if digest is not None else None
    if isinstance(remembered, dict) and isinstance(remembered.get("pad_token_id"), int):
        return remembered["pad_token_id"], None
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    require_cache_tokenizer(tokenizer, cache_identity, model_flag)
    if digest is not None:
        from ..atomic import write_json_atomic

        try:
            write_json_atomic(path, {**record, key: {"pad_token_id": tokenizer.pad_token_id}})
        except OSError:
            pass
    return tokenizer.pad_token_id, tokenizer
