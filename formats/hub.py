"""The Hugging Face Hub at the edges: a trained `final/` pushed as a model repo, a cache pushed
as a dataset repo, and a cache read back from one (`--cache hf:ORG/NAME`).

A pulled cache is an ordinary cache directory (the HF cache's snapshot folder): it is opened
with formats/cache.py like any other, so its manifest is checked and each shard's sha256 is
compared with the manifest's on first read. Network and auth errors are one line naming the
repo. huggingface_hub is imported on use only (it honours HF_ENDPOINT and HF_TOKEN).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError
from .schema import MANIFEST_NAME

PREFIX = "hf:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A cache's own bookkeeping (journal, lock, verification memos, staging, temp names) stays home:
# every hidden file or folder, at the top or in eval/.
PRIVATE_PATTERNS = [".*", "*/.*"]


def check_repo_id(repo_id: str, flag: str = "--push-to-hub") -> str:
    """`ORG/NAME` as the Hub spells repo ids; anything else is refused before any work starts."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise InputError(f"{flag} {repo_id}: not a hub repo id (ORG/NAME)")
    return repo_id


def is_hub_cache(spec: str | Path) -> bool:
    return str(spec).startswith(PREFIX)


def push_folder(folder: Path, repo_id: str, *, dataset: bool, private: bool, message: str) -> str:
    """Create `repo_id` (model or dataset repo; kept if it exists) and upload `folder` in one
    commit, hidden files left out. Returns the commit URL."""
    from huggingface_hub import HfApi

    kind = "dataset" if dataset else "model"
    try:
        api = HfApi()
        api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=kind, commit_message=message, ignore_patterns=PRIVATE_PATTERNS)
    except Exception as exc:  # network, auth, a name taken: one line for the user
        raise InputError(f"--push-to-hub {repo_id}: cannot upload {folder} ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    return str(commit)


def fetch_cache(spec: str | Path, flag: str = "--cache") -> Path:
    """`hf:ORG/NAME[/SUBDIR]` (SUBDIR e.g. `eval`): the dataset repo's files in the local HF
    cache, downloaded once; returns the cache directory inside that snapshot."""
    from huggingface_hub import snapshot_download

    parts = str(spec)[len(PREFIX) :].split("/")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    check_repo_id(repo_id, flag)
    try:
        local = Path(snapshot_download(repo_id, repo_type="dataset"))
    except Exception as exc:
        raise InputError(f"{flag} {spec}: cannot fetch from the hub ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    folder = local / sub if sub else local
    if not (folder / MANIFEST_NAME).is_file():
        raise InputError(f"{flag} {spec}: the dataset repo holds no kto-precompute cache (no {sub + '/' if sub else ''}{MANIFEST_NAME})")
    return folder


def hub_spec_of(folder: str | Path) -> str | None:
    """`hf:ORG/NAME[/SUBDIR]` for a folder fetch_cache returned (huggingface_hub's cache layout:
    …/datasets--ORG--NAME/snapshots/REVISION[/SUBDIR]), else None. A command printed for the
    user (the --resume one) names the repo as typed, not this machine's snapshot, which another
    machine, or this one after its HF cache is cleared, does not have."""
    parts = Path(folder).parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("datasets--") and parts[i + 1] == "snapshots":
            org, _, name = part.removeprefix("datasets--").partition("--")
            return PREFIX + "/".join((org, name, *parts[i + 3 :]))
    return None
