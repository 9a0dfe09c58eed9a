"""`--config FILE` for every command: YAML (.yaml/.yml) or TOML (.toml) whose keys are flag names.

One loader for kto-precompute and kto-train. It only reads and checks the keys; the caller
converts values (paths, types) and merges them under the command-line flags, which win.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .errors import InputError


def load_config_file(path: str | Path, known: Iterable[str]) -> dict:
    """{field name: raw value}. Keys may use dashes or underscores; unknown keys are refused."""
    path = Path(path)
    is_toml = path.suffix.lower() == ".toml"
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"--config {path}: cannot read ({exc.strerror})") from exc
    try:
        if is_toml:
            import tomllib

            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
    except Exception as exc:  # noqa: BLE001  (yaml and tomllib raise their own types)
        detail = " ".join(str(exc).split())
        raise InputError(f"--config {path}: not valid {'TOML' if is_toml else 'YAML'} ({detail})") from exc
    if not isinstance(raw, dict):
        raise InputError(f"--config {path}: expected a mapping of flag names to values")
    known = set(known)
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise InputError(f"--config {path}: unknown key {key!r}")
        out[name] = value
    return out
