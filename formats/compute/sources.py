"""Model sources: what `--model` names (a local dir, a `.gguf` file or a hub id) as a
`ModelSource`, and the refusals of a folder that would load another model than the one named.

Every command resolves --model here, so "the same `--model`" means the same thing to
kto-precompute, kto-train and kto-inspect. Nothing here reads a weight: a kto-train run folder,
a folder whose links lead out of it, a .gguf beside a tokenizer.json, a model folder holding an
adapter, or a folder without config.json (an adapter, an FSDP checkpoint) is refused from its
file names and small JSON files, before anything is loaded.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, exception_line
from ..files import read_json, same_dir, stat_or_none
from ..runrecord import FINAL_DIR, MERGED_DIR, refuse_run_dir_as_model, run_of_model_dir
from .gguf_once import refuse_without_gguf
from .sharded import SHARDED_DIR, is_sharded_checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import PreTrainedModel


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
    # A name too long, or a folder above it or the folder itself that cannot be searched: one
    # line naming the flag (Path.is_file() and its kin raise those, as tracebacks, below).
    found = stat_or_none(path, f"{flag} {spec}")
    if found is not None and stat.S_ISDIR(found.st_mode):
        stat_or_none(path / "config.json", f"{flag} {spec}")
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
    runs save, and a LoRA run's final/ and checkpoints) and a kto-train FSDP checkpoint are told
    apart, with how to make a model of it: the run's final-merged/ where it wrote one, else
    `kto-inspect export` (inspection/export.py), which reads both."""
    adapter = path / "adapter_config.json"
    sharded = is_sharded_checkpoint(path)
    if sharded and not adapter.is_file():
        return InputError(
            f"{flag} {spec}: an FSDP checkpoint (its weights are sharded in {SHARDED_DIR}/*.distcp), not a model directory; "
            f"`kto-inspect export {spec} DIR` writes it as one: give DIR, or give RUN/final"
        )
    if not adapter.is_file():
        return InputError(f"{flag} {spec}: directory has no config.json")
    base = _adapter_base(adapter)
    export = f"`kto-inspect export --merge {spec} DIR`"
    run = run_of_model_dir(path)
    if run is None:
        return InputError(
            f"{flag} {spec}: a LoRA adapter folder (adapter_config.json), not a model; merge it into {base} first ({export}, or "
            f"peft: PeftModel.from_pretrained(base, '{spec}').merge_and_unload().save_pretrained(DIR), with the tokenizer) and give DIR"
        )
    given = Path(spec)
    # As the user wrote the path where its parent is the run, else the run's real path (a link to final/ elsewhere)
    merged = (given.parent if given.name == path.resolve().name and same_dir(path.parent, run) else run) / MERGED_DIR
    what = f"{flag} {spec}: a LoRA run's adapters (adapter_config.json{f', their weights sharded by FSDP in {SHARDED_DIR}/*.distcp' if sharded else ''}), not a model"
    if path.resolve().name == FINAL_DIR:
        if (run / MERGED_DIR).is_dir():
            return InputError(f"{what}; the run merged them into its base: give {merged}")
        return InputError(f"{what}; {export} writes them merged into {base}: give DIR")
    held = f"{merged} holds the run's final adapters merged into its base (give that), or " if (run / MERGED_DIR).is_dir() else ""
    return InputError(f"{what}; {held}{export} writes these merged into {base}: give DIR")
