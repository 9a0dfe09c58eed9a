"""Reading a torch.distributed.checkpoint (DCP) folder without unpickling arbitrary objects.

DCP's own FileSystemReader reads `.metadata` with a plain `pickle.load` (torch 2.13, and every
release before it), so a checkpoint whose `.metadata` pickles `os.system` or `builtins.eval`
runs that code as it loads, `checksums.json` or not (whoever writes the one writes the other).
And an item that `.metadata` calls bytes (BytesStorageMetadata: DCP's way to store a value that
is not a tensor) goes through the load planner's `load_bytes`, `torch.load(weights_only=False)`
(torch 2.6 to 2.13). Tensor items are read with `torch.load(weights_only=True)` by DCP itself
(since torch 2.6, the oldest pyproject.toml allows, as transformers 5.21 does; 2.5 unpickled them).

So every DCP read of kto goes through here:
- `read_metadata` unpickles `.metadata` with `_MetadataUnpickler`, which builds only the classes a
  DCP Metadata holds (found by disassembling the .metadata of kto-train FSDP checkpoints, full
  and LoRA, with their optimizer state) and refuses any other in one line;
- `load` hands that parsed Metadata to dcp.load through `_ParsedReader` (so DCP never unpickles
  `.metadata` itself, nor a rank's `__N.metadata`, its fallback), and reads bytes items with
  `torch.load(weights_only=True)` (`_WeightsOnlyPlanner`), after refusing any key that the
  caller gives as a tensor but `.metadata` stores as bytes (it would replace the tensor instead
  of filling it).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import ReadItem

from ..errors import InputError

_PATHS = {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}
# The classes whose instances a DCP Metadata's pickle fills in with BUILD (their fields):
# Metadata's dataclasses and the filesystem writer's per-item record.
_BUILT = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
}
# module -> the names a DCP Metadata's pickle may name there: those classes; the memory format's
# enum; torch.Size; a layout by name (torch.serialization's _get_layout, how torch pickles
# torch.strided); StorageMeta.checkpoint_id, a path. torch dtypes (torch.float32, ...) are
# allowed by what they are, in `find_class`.
ALLOWED = {
    **_BUILT,
    "torch.distributed.checkpoint.metadata": {*_BUILT["torch.distributed.checkpoint.metadata"], "_MEM_FORMAT_ENCODING"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": _PATHS,
    "pathlib._local": _PATHS,  # Python 3.13's home of the path classes
    "collections": {"OrderedDict"},
}


@dataclass(frozen=True)
class DcpFolder:
    """A DCP folder `where` of checkpoint `checkpoint`, which `flag` gave: what errors name.
    `every_rank`: every process reads it (an FSDP --resume), so each raises the same error."""

    where: Path
    flag: str
    checkpoint: Path
    every_rank: bool = False

    def refused(self, what: str) -> InputError:
        return InputError(f"{self.flag} {self.checkpoint}: {what}", every_rank=self.every_rank)

    @property
    def metadata_name(self) -> str:
        return f"{self.where.name}/.metadata"


class _NotMetadata(pickle.UnpicklingError):
    """A global that no checkpoint metadata names: `module.name`."""


class _MetadataUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its opcodes are methods, so BUILD can be checked): find_class
    names only ALLOWED, and BUILD sets the fields of a metadata dataclass's instance only. BUILD on
    anything else (an allowed class itself, `PosixPath`; a shared object such as an enum member or
    torch.strided) would set attributes for the whole process: a `_str` on PosixPath turned every
    Path into an attacker's file, which a later write then overwrote."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise _NotMetadata(f"{module}.{name}")

    def load_build(self) -> None:
        instance = self.stack[-2] if len(self.stack) > 1 else None  # the state is on top, the object it fills under it
        target = type(instance)
        if isinstance(instance, type) or target.__name__ not in _BUILT.get(target.__module__, ()):
            raise _NotMetadata(f"state set on {target.__module__}.{target.__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def read_metadata(folder: DcpFolder) -> Metadata:
    """The Metadata in `folder`'s .metadata, built from checkpoint metadata classes only, each of
    its items in a plain file of the folder."""
    name, file = folder.metadata_name, folder.where / ".metadata"
    if file.exists() and not file.is_file():  # a FIFO would block the read forever
        raise folder.refused(f"{name} unreadable (not a regular file)")
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except _NotMetadata as exc:  # refused before anything it names is called
        raise folder.refused(f"{name} holds a pickled object that is not checkpoint metadata ({exc}); not loaded") from None
    except Exception as exc:  # a missing or damaged .metadata: one line, whatever it raises
        raise folder.refused(f"{name} unreadable ({type(exc).__name__})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict) or not isinstance(metadata.storage_data, dict):
        raise folder.refused(f"{name} holds a {type(metadata).__name__} that is not checkpoint metadata; not loaded")
    for file in {getattr(info, "relative_path", None) for info in metadata.storage_data.values()}:
        if not isinstance(file, str) or Path(file).name != file or file.startswith("."):
            raise folder.refused(f"{name} points at {file!r}, not a file of {folder.where.name}/; not loaded")
        if not (folder.where / file).is_file():  # a FIFO would block the read forever; a link to a file is followed
            raise folder.refused(f"{folder.where.name}/{file}: not a regular file; not loaded")
    return metadata


def refuse_bytes_for_tensors(state: dict, metadata: Metadata, folder: DcpFolder) -> None:
    """Each tensor of `state` (by DCP's flattened key) must be stored as a tensor: one stored as
    bytes would be unpickled and put in its place, leaving the caller's tensor as it was."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    flat, _ = flatten_state_dict(state)
    stored = metadata.state_dict_metadata
    for key, value in flat.items():
        if isinstance(value, torch.Tensor) and key in stored and not isinstance(stored[key], TensorStorageMetadata):
            raise folder.refused(f"{folder.metadata_name} stores {key} as pickled bytes, not a tensor; not loaded")


class _ParsedReader(FileSystemReader):
    """DCP's FileSystemReader on a Metadata that read_metadata (above) parsed: DCP asks it for
    .metadata (and, where that fails, for a rank's __N.metadata) and gets that one."""

    def __init__(self, path: Path, metadata: Metadata) -> None:
        super().__init__(path)
        self.parsed = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if getattr(self.parsed, "storage_meta", None) is not None:
            self.parsed.storage_meta.load_id = self.load_id  # as FileSystemReader.read_metadata does
        return self.parsed


class _WeightsOnlyPlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading bytes items (an optimizer's param_groups: floats,
    tuples, strings) with torch.load(weights_only=True) where it uses weights_only=False."""

    def __init__(self, folder: DcpFolder) -> None:
        super().__init__()
        self.folder = folder

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        fqn = read_item.dest_index.fqn
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError:
            raise self.folder.refused(f"{self.folder.where.name}/ holds {fqn} as a pickled object that is not plain data; not loaded") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded


def load(state: dict, folder: DcpFolder, metadata: Metadata, *, no_dist: bool = False) -> None:
    """dcp.load of `state` (filled in place) from `folder`, whose .metadata is `metadata`
    (read_metadata's). An InputError raised while loading (a bytes item refused) is raised as
    itself, not inside DCP's CheckpointException; other failures are DCP's."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    refuse_bytes_for_tensors(state, metadata, folder)
    try:
        dcp.load(state, storage_reader=_ParsedReader(folder.where, metadata), planner=_WeightsOnlyPlanner(folder), no_dist=no_dist)
    except CheckpointException as exc:  # a BaseException: each rank's (exception, traceback)
        for failure, _trace in exc.failures.values():
            if isinstance(failure, InputError):
                raise failure from None
        raise
