"""The tokenizer of --model against a cache's: refuse one whose token ids would mean other
words, and remember in the cache a tokenizer already found equal.

A cache holds token ids, not text: kto-train and `kto-inspect score` read them with --model's
tokenizer, so its identity (identity.py `tokenizer_identity`) must match the one the cache
recorded. A chat template that alone differs is told apart (`ChatTemplateDiffers`), since
kto-train takes such a model with a note.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..files import read_json, sha256_file
from .identity import diff_identity, tokenizer_identity
from .loading import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .sources import ModelSource


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
    key = f"{digest}:{hashlib.sha256(json.dumps(cache_identity, sort_keys=True).encode()).hexdigest()}"
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
