"""The checks of the paths a command was given that can run before torch and transformers load.

Importing torch and transformers costs about 4 s of CPU on a 2-core machine, and kto-precompute
and kto-train used to pay it before looking at `--data`, `--model` or `--cache`: a typo, a FIFO
or a link to /dev/zero was refused after those seconds. These functions are the commands' own
checks (the same functions, hence the same one-line messages), called first; the commands make
them again where they always did, which costs a `stat` and a manifest read.

Only what needs neither a model nor the network is checked here: a hub id (`--model ORG/NAME`,
`--cache hf:ORG/NAME`) is left to the command, which may download it.
"""

from __future__ import annotations

from pathlib import Path

from ..cache import open_cache
from ..files import stat_or_none
from ..hub import is_hub_cache
from .sources import hub_id_shaped, resolve_source


def check_local_model(spec: str, flag: str = "--model") -> None:
    """resolve_source's refusals of a local `spec` (missing, a directory without config.json, a
    file that is not .gguf); a spec shaped like a hub id that names no local path is let through."""
    if stat_or_none(Path(spec).expanduser(), f"{flag} {spec}") is not None or not hub_id_shaped(spec):
        resolve_source(spec, flag)


def check_local_cache(cache: str | Path) -> None:
    """open_cache's refusals of a local cache directory (missing, no or a bad manifest.json);
    an `hf:` cache is let through. Writes nothing (no .verified.json stamps)."""
    if not is_hub_cache(cache):
        open_cache(cache, stamps=False, hold=False)  # the manifest only: no shard held
