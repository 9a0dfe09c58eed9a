"""A config dataclass's values checked against its own annotations, for TrainConfig and
PrecomputeConfig alike: the Python API's values as strict as the CLI's, before any range is
checked. A whole number is not True or 2.0; a number (an int too, kept as a float, as click
gives it) is not True or "1e-6"; a switch is True or False, not "no"; a path is text or any
os.PathLike, kept as a Path. numpy numbers and bools are taken as Python's (the manifest and
the run record are JSON)."""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from pathlib import Path

from .config_keys import switch_value
from .errors import InputError
from .paths import EMPTY_PATH, expand_home, refuse_undecodable

# What an annotation takes, said in a refusal: a value of the type the CLI gives (click's int,
# float, bool, Path, str; a JSON object for --lr-schedule-kwargs and --chat-template-kwargs).
EXPECTED = {int: "a whole number", float: "a number", bool: "True or False", Path: "a path", str: "text", dict: "a JSON object"}
_SHOWN = 60  # longest repr a refusal quotes; a longer one (a row, a model, a DataFrame) is named by type
# Paths pyarrow opens or tokenizers write through (shards, a run's tokenizer and final model):
# both encode the path as UTF-8, so a name that is not (a byte such as 0xfe, read as a lone
# surrogate) failed late: kto-train after every step, in save_pretrained. Refused with the
# types, before any work. --data names its own files (precompute/inputs/records.py).
UTF8_PATHS = ("out", "cache", "eval_cache", "model")


def check_field_types(cfg: object, text_paths: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Each field of the frozen dataclass `cfg` set to its value as its annotated type, or a
    one-line refusal naming the flag. `text_paths` are text fields that take a Path too (a model
    given as a local directory); `skip` are fields that check themselves (a JSON text or object)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if f.name in skip:
            continue
        value = getattr(cfg, f.name)
        if f.name in text_paths and isinstance(value, os.PathLike):
            value = os.fspath(value)
        object.__setattr__(cfg, f.name, typed(f.name, value, hints[f.name]))


def typed(name: str, value: object, hint: object) -> object:
    """`value` as the annotation `hint` takes it: one type, a union (`int | None`), or a tuple of
    paths (one path alone is one item, not its letters)."""
    if typing.get_origin(hint) is tuple:
        return _items(name, value, typing.get_args(hint)[0])
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    value = _one(name, value, typing.get_args(hint) if union else (hint,))
    if name in UTF8_PATHS and isinstance(value, (str, os.PathLike)):
        refuse_undecodable(value, f"--{flag(name)}")
    return value


def _items(name: str, value: object, kind: type) -> tuple:
    """A list or tuple of `kind`, or one alone. Any other collection is refused: a DataFrame
    iterates its column names (read as file names), a set or a generator has no order to keep."""
    if isinstance(value, (str, os.PathLike)):
        value = (value,)
    elif not isinstance(value, (list, tuple)):
        one = EXPECTED.get(kind, kind.__name__)
        raise refusal(name, value, f"{one} or a list of {one.removeprefix('a ')}s", by_type=True)  # {'a.jsonl'} reads as a list
    return tuple(_one(name, item, (kind,)) for item in value)


def _one(name: str, value: object, kinds: tuple) -> object:
    if value is None and type(None) in kinds:
        return None
    if switch_value(value) is not None:  # a bool is no whole number or number here
        if bool in kinds:
            return switch_value(value)
    elif int in kinds and isinstance(value, numbers.Integral):
        return int(value)
    elif float in kinds and isinstance(value, numbers.Real):
        return float(value)
    elif Path in kinds and isinstance(value, (str, os.PathLike)):
        if value == "":  # Path('') is the current directory: out='' wrote the cache there
            raise InputError(f"--{flag(name)} '': {EMPTY_PATH}")
        return Path(expand_home(value))  # text only: a Path may name a real folder `~` (formats/paths.py)
    elif str in kinds and isinstance(value, str):
        return value
    elif dict in kinds and isinstance(value, dict):
        return value
    elif any(k not in EXPECTED and isinstance(value, typing.get_origin(k) or k) for k in kinds):
        return value  # a type with no word here (a column map): checked, said by its name below
    raise refusal(name, value, _expected(kinds))


def refusal(name: str, value: object, expected: str, by_type: bool = False) -> InputError:
    """One short line: the value as written when it fits (`--seed 'x': expected a whole
    number`), else (or `by_type`) its type (`--model: expected text, got Sequential`), so a
    loaded model or a row is not printed whole."""
    shown = repr(value)
    if not by_type and len(shown) <= _SHOWN and "\n" not in shown:
        return InputError(f"--{flag(name)} {shown}: expected {expected}")
    return InputError(f"--{flag(name)}: expected {expected}, got {type(value).__name__}")


def _expected(kinds: tuple) -> str:
    """What a field takes, in words: 'a whole number', 'True, False or a path' (None unsaid)."""
    words = [EXPECTED.get(k, getattr(k, "__name__", str(k))) for k in kinds if k is not type(None)]
    if len(words) == 1:
        return words[0]
    words = [w.replace(" or ", ", ") for w in words]  # bool | Path: True, False or a path
    return ", ".join(words[:-1]) + " or " + words[-1]


def flag(name: str) -> str:
    """A field's command-line flag, without its dashes: batch_size -> batch-size."""
    return name.replace("_", "-")
