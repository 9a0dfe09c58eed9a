"""Identities: cheap fingerprints of a model's weight files and config, and of a tokenizer, as
the cache's manifest and a run's record keep them.

A cache is only reused, and a run only resumed, with the model and tokenizer that made it
(manifest.py `same_model`); a mismatch says which part differs. Paths are left out, so moving a
model does not change its identity. The comments on SAMPLE_BLOCKS, SMALL_TENSOR_BYTES and the
whole-file hash say why each part is there: each was added when a changed model passed for the
one before.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..files import read_json, regular_file, sha256_file
from .safetensors_headers import header_bytes
from .sources import WEIGHT_SUFFIXES

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .sources import ModelSource


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
        header = header_bytes(f, size)
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
        parts["pipeline"] = _pipeline_digest(backend.to_str())
    return parts


# The pipeline digest of each serialized tokenizer seen in this process, by the text's sha256.
_PIPELINE_DIGESTS: dict[str, str] = {}


def _pipeline_digest(serialized: str) -> str:
    """The hash of a tokenizer pipeline's JSON with its keys sorted. Sorting 1.5 MB of JSON takes
    0.5 s, and a script or test that calls kto's commands again in one process loads the same
    tokenizer each time: remembered by the serialized text's own hash (2 ms)."""
    key = _sha256(serialized.encode())
    if key not in _PIPELINE_DIGESTS:
        pipeline = json.loads(serialized)
        # Padding/truncation settings are runtime state, not part of what ids a text maps to.
        pipeline.pop("padding", None)
        pipeline.pop("truncation", None)
        _PIPELINE_DIGESTS[key] = _sha256(json.dumps(pipeline, sort_keys=True).encode())
    return _PIPELINE_DIGESTS[key]


def diff_identity(expected: dict, actual: dict) -> list[str]:
    """Names of the parts that differ (missing on either side counts as different)."""
    return sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
