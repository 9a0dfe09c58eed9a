"""`--config FILE` for every command: YAML (.yaml/.yml) or TOML (.toml) whose keys are flag names.

One loader for kto-precompute and kto-train. It reads the keys and sorts them (TRL's and
LLaMA-Factory's names are aliases of ours: config_keys.py); the caller
converts values (paths, types) and merges them under the command-line flags, which win.

YAML anchors and aliases (`&name`, `*name`) are refused: nine aliases of nine aliases of … expand
a file of a few hundred bytes into millions of values (a "billion laughs"), which the loader
shares but every later copy, hash or JSON dump of them expands (a 404-byte file held
kto-precompute for 40 s, and each level multiplies that by 10). A config file has no need of them.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config_keys import PRECOMPUTE, TRAIN, same_value
from .config_names import SECRET_KEYS, Resolved, resolve
from .errors import InputError
from .files import regular_file, utf8_text
from .paths import expand_home
from .runrecord import KIND

if TYPE_CHECKING:
    import click

__all__ = ["PRECOMPUTE", "TRAIN", "Resolved", "file_key_error", "load_config_file", "read_mapping", "resolve_config_file"]


def read_mapping(path: str | Path) -> dict:
    """{key with dashes turned into underscores: raw value} of a YAML or TOML file. A file of no
    keys (empty, whitespace or comments only, `{}`) is refused: it ran as if --config had not
    been given, all defaults, when it was most likely the wrong file or one whose keys were lost."""
    path = Path(path)
    is_toml = path.suffix.lower() == ".toml"
    regular_file(path, f"--config {path}")
    text = utf8_text(path, f"--config {path}")
    try:
        raw = tomllib.loads(text) if is_toml else _load_yaml(text, path)
    except InputError:
        raise
    except Exception as exc:  # yaml and tomllib raise their own types
        raise InputError(f"--config {path}: not valid {'TOML' if is_toml else 'YAML'} ({_parse_error(exc)})") from exc
    if raw is None or raw == {}:  # YAML's empty document is None, TOML's an empty table
        raise InputError(f"--config {path}: holds no keys (the file is empty or only comments); write the flags to set in it, or leave --config out")
    if not isinstance(raw, dict):
        raise InputError(f"--config {path}: expected a mapping of flag names to values")
    out: dict = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name in out:  # max-steps and max_steps: one option, given twice
            spelt = next(k for k in raw if str(k).replace("-", "_") == name)
            raise InputError(f"--config {path}: {spelt!r} and {key!r} are one option ({name}); give it once")
        out[name] = value
    return out


def load_config_file(path: str | Path, known: Iterable[str]) -> dict:
    """{field name: raw value}, our own names only (keys may use dashes or underscores)."""
    raw = read_mapping(path)
    unknown = [key for key in raw if key not in set(known)]
    if unknown:
        raise InputError(f"--config {path}: unknown key {unknown[0]!r}")
    return raw


def resolve_config_file(path: str | Path, command: str, known: Iterable[str]) -> Resolved:
    """The file's values under `command`'s option names, TRL's and LLaMA-Factory's names
    included (config_names.py), with the lines that say what was mapped or ignored."""
    raw = read_mapping(path)
    is_record = raw.get("kind") == KIND and isinstance(raw.get("config"), dict)
    if is_record and command != TRAIN:
        raise InputError(f"--config {path}: a kto-train run record (its settings re-run with kto-train --config {path}), not {command}'s settings")
    moved: list[str] = []
    if is_record:
        raw, moved = run_record_settings(raw)
    try:
        resolved = resolve(raw, command, known)
    except InputError as exc:
        raise InputError(f"--config {path}: {exc}") from None
    resolved.written = raw
    resolved.notes = [f"--config {path}: {note}" for note in resolved.notes]
    if is_record:
        resolved.notes[:0] = [f"--config {path}: {RUN_RECORD_NOTE}", *(f"--config {path}: {line}" for line in moved)]
    resolved.default_notes = {name: f"--config {path}: {note}" for name, note in resolved.default_notes.items()}
    return resolved


# A kto-train run record (RUN/kto_run.json) given to --config: its settings, to run it again
# (another --out, another --seed). Not where it ran, nor whether it resumed: a second run into the
# first's --out would be refused as an earlier run, and --resume is the way to continue one. Nor
# where it was pushed: a re-run pushing to the first's Hub repo would replace its model there.
RUN_RECORD_LEFT_OUT = ("out", "resume", "push_to_hub", "hub_private")
RUN_RECORD_PATHS = ("cache", "model", "eval_cache")
RUN_RECORD_NOTE = "the settings of the kto-train run it records (its --out, --resume and --push-to-hub left out)"


def run_record_settings(record: dict) -> tuple[dict, list[str]]:
    """The settings of a kto-train run record, as a config file's keys, and a line for each path
    read from another folder than the run's. A relative path is the run's own, relative to the
    folder it started in (the record's `cwd`), where that holds it; else it stays as typed (a
    hub id, or a record without `cwd`), and where the current folder holds it, which may be
    another cache or model than the run's (a copied or renamed project), a line says so."""
    settings = {k: v for k, v in record["config"].items() if k not in RUN_RECORD_LEFT_OUT}
    if settings.get("auto_weights") is True:
        # The record holds the weight --auto-weights chose; given beside it, it would be refused
        # as one the choice replaces. The re-run chooses it again from its cache.
        settings.pop("desirable_weight", None)
    cwd, moved = record.get("cwd"), []
    for key in RUN_RECORD_PATHS:
        value = settings.get(key)
        if isinstance(cwd, str) and isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            there = os.path.join(cwd, value)
            if os.path.exists(there):
                settings[key] = there
            elif os.path.exists(value):
                flag = "--" + key.replace("_", "-")
                moved.append(f"{flag} {value} is not in {cwd}, where the run started: read from here, which may hold another {key.replace('_', ' ')}")
    return settings, moved


_FLAG = re.compile(r"--([a-z0-9][a-z0-9-]*)")


def file_key_error(exc: InputError, path: str | Path, command: str, resolved: Resolved, values: Mapping[str, Any], given: Callable[[str], bool]) -> InputError:
    """A range or consistency error of the command's config (`--beta 0.0: must be positive`)
    about a value the file set, as the file writes it: `--config f.yaml: pref_beta 0
    (kto-train's --beta): must be positive`. Other flags the message names that the file set
    are said at its end (`--lora-r` from `finetuning_type: full`).

    The checks themselves name flags (the Python API and the command line share them); here the
    leading `--flag` is mapped back to the file's key only when the file set that option and the
    command line did not (`given(name)`: a flag on the command line wins over the file, so the
    error is about the flag), and the value in force (`values`) is still the file's. A message
    that leads with a flag of the command line (or a default) stays as it is, but the file's
    values it names after it are said with the file's name (`--max-length` from `cutoff_len`):
    the user typed the first, never the second."""
    message = str(exc)
    if message.startswith("--config "):
        return exc  # names the file already (kto-train's checks of what the file asks)
    match = _FLAG.match(message)
    if match:
        name, key, item = match.group(1).replace("-", "_"), _file_key(match.group(1), resolved, values, given), None
    else:  # a path check's message leads with the path (`nocache: no such cache directory`)
        name, key, item = _leading_path(message, resolved, values, given)
    if not key:
        lead = match.group(0) if match else None
        said = _also_from_file(message[match.end() :] if match else message, lead, f"--config {path}'s", resolved, values, given)
        return InputError(f"{message}{said}", every_rank=exc.every_rank) if said else exc
    flag = f"--{name.replace('_', '-')}"
    rest = message[match.end() :] if match else message[len(item) :]
    in_force = values.get(name)
    # The file's value replaces the converted one (0, not 0.0); of a list of paths, the one said.
    spellings = [os.fspath(i) for i in in_force] if isinstance(in_force, tuple) else [str(in_force), repr(in_force)]
    for spelt in spellings:
        if match and rest.startswith(f" {spelt}:"):
            rest, item = rest[len(spelt) + 1 :], item or (spelt if isinstance(in_force, tuple) else None)
            break
    # One of a list of paths (`data: [a.jsonl, b.jsonl]`) is named alone: the one refused.
    named = (f"{key}: {item}" if isinstance(in_force, tuple) and item else _written(key, resolved)) + ("" if key == name else f" ({command}'s {flag})")
    said = _also_from_file(rest, flag, "the file's", resolved, values, given)
    return InputError(f"--config {path}: {named}{rest}{said}", every_rank=exc.every_rank)


def _leading_path(message: str, resolved: Resolved, values: Mapping[str, Any], given: Callable[[str], bool]) -> tuple[str, str | None, str | None]:
    """(our name, the file's key, the path as said) of the path the file set that `message`
    starts with, as the start-up checks of paths say it (`nocache: no such cache directory`,
    `b.jsonl: no such file` of `data: [a.jsonl, b.jsonl]`); ('', None, None) if none."""
    said = [
        (name, os.fspath(item))
        for name, value in values.items()
        for item in (value if isinstance(value, tuple) else (value,))
        if isinstance(item, os.PathLike) and message.startswith(f"{os.fspath(item)}: ")
    ]
    # Only a path that one option holds, and the file set: the same path given on the command
    # line too (`--cache x` and `eval_cache: x`) may be the one refused, and the message cannot say.
    if len({name for name, _ in said}) != 1:
        return "", None, None
    name, item = said[0]
    key = _file_key(name, resolved, values, given)
    return (name, key, item) if key else ("", None, None)


def _also_from_file(text: str, lead: str | None, whose: str, resolved: Resolved, values: Mapping[str, Any], given: Callable[[str], bool]) -> str:
    """`; --flag comes from WHOSE key: value` for each other flag in `text` whose value in force the file set."""
    also = {m.group(0): _file_key(m.group(1), resolved, values, given) for m in _FLAG.finditer(text)}
    return "".join(f"; {other} comes from {whose} {_written(k, resolved, ': ')}" for other, k in also.items() if k and other != lead)


def _file_key(flag: str, resolved: Resolved, values: Mapping[str, Any], given: Callable[[str], bool]) -> str | None:
    """The file's key that set the option `flag` (dashes) to the value in force, or None."""
    name = flag.replace("-", "_")
    key = resolved.key_of(name)
    if key is None or name not in resolved.values or name not in values or given(name):
        return None
    return key if _same_in_force(resolved.values[name], values[name]) else None


def _same_in_force(written: Any, in_force: Any) -> bool:
    """The file's value is the one in force, once converted as the flag's type converts it: a
    path (`resume: 5` is Path('5')), a list of paths (`data: a.jsonl` is (Path('a.jsonl'),)), a
    list joined by commas (`lora_target: [q_proj, v_proj]`), NaN (never equal to itself, so a
    NaN from the file was put on a flag the user never typed)."""
    if isinstance(in_force, tuple):
        items = written if isinstance(written, (list, tuple)) else [written]
        return len(items) == len(in_force) and all(_same_in_force(w, f) for w, f in zip(items, in_force, strict=True))
    if isinstance(in_force, os.PathLike):
        return not isinstance(written, (bool, list, dict)) and written is not None and expand_home(str(written)) == os.fspath(in_force)
    if isinstance(written, list) and isinstance(in_force, str):
        return ",".join(map(str, written)) == in_force
    if same_value(written, in_force):
        return True
    try:
        return not isinstance(written, bool) and math.isnan(float(written)) and math.isnan(float(in_force))
    except (TypeError, ValueError):
        return False


def _written(key: str, resolved: Resolved, between: str = " ") -> str:
    """`KEY VALUE` as the file writes it (true, not True; [a, b], not ['a', 'b']); a secret's value unsaid."""
    if key not in resolved.written or key in SECRET_KEYS:
        return key
    return f"{key}{between}{_as_written(resolved.written[key])}"


def _as_written(value: Any) -> str:
    """A value as YAML writes it: true, null, '' (an empty text is not left out), [a, b], {a: 1}."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, list):
        return "[" + ", ".join(map(_as_written, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_as_written(v)}" for k, v in value.items()) + "}"
    return "''" if value == "" else str(value)


def _parse_error(exc: Exception) -> str:
    """A parser's complaint with its line and column, without the line itself, which PyYAML
    quotes: that line may hold a secret (`hub_token: hf_...`), and the error is printed and logged."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        said = ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark))
        parts = [f"{words} at line {mark.line + 1}, column {mark.column + 1}" for words, mark in said if words and mark]
        return "; ".join(parts) or type(exc).__name__
    return " ".join(str(exc).split())


def _load_yaml(text: str, path: Path):
    """yaml.safe_load, refusing anchors and aliases before any node is built."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                line = event.start_mark.line + 1
                raise InputError(f"--config {path}: line {line}: YAML aliases (&/*) are not accepted in config files")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            # YAML itself keeps the last of two equal keys, silently: a value the user wrote is lost.
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise InputError(f"--config {path}: line {key_node.start_mark.line + 1}: {key!r} again (first on line {seen[key]}); give it once")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()  # None for a file of no document (empty, or comments only)
    finally:
        loader.dispose()


_NOT_EMPTY = frozenset({"model"})
"""Text options that an empty text cannot mean: --model is a hub id or a path, never nothing."""


def option_value(param: click.Parameter, where: str, value: Any) -> Any:
    """One --config value converted and checked as the flag's own type would be on the command
    line, for both commands; `where` names the file and key in the error.

    YAML reads `lr: 1e-6` as a string (YAML 1.1 wants `1.0e-6` for a float), so strings are
    converted like command-line text; but a true/false is never taken for a number, nor 2.5 for
    a whole number, as Python's int() and float() would, and a list or mapping is refused where
    one value goes (click's own type_cast_value raised a TypeError traceback for `[1, 2]`)."""
    import click

    kind = param.type
    if value is None:
        if param.default is None and not getattr(param, "is_flag", False):
            return None
        raise InputError(f"{where}: is empty; give a value or leave the key out")
    if value == "" and (isinstance(kind, click.Path) or param.name in _NOT_EMPTY):
        # Path('') is the current directory: `output_dir: ''` put the run (or the cache) there.
        raise InputError(f"{where}: is empty; give a value or leave the key out")
    if isinstance(value, (dict, list)):
        raise InputError(f"{where}: expected one {kind.name} value, got a {'mapping' if isinstance(value, dict) else 'list'}")
    if isinstance(kind, click.types.BoolParamType):
        if isinstance(value, bool):
            return value
        if not isinstance(value, str):
            raise InputError(f"{where}: {value!r} is not true or false")
    elif isinstance(value, bool):
        raise InputError(f"{where}: {value} is true/false; expected {kind.name}")
    elif isinstance(kind, click.types.IntParamType) and isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"{where}: {value!r} is not a whole number")
        value = int(value)
    elif isinstance(kind, (click.Choice, click.Path, click.types.StringParamType)):
        value = str(value)
    elif isinstance(value, (datetime.date, datetime.time)):  # YAML's and TOML's unquoted dates and times
        what = "a time" if isinstance(value, datetime.time) else "a date"
        raise InputError(f"{where}: {value.isoformat()} is {what}; expected {kind.name}")
    try:
        return kind.convert(value, param, None)
    except click.BadParameter as exc:
        raise InputError(f"{where}: {' '.join(exc.message.split())}") from None
