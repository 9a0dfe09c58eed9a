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
from typing import TYPE_CHECKING

from .errors import InputError, exception_line, log
from .schema import EVAL_DIR, MANIFEST_NAME, SHARD_GLOB

if TYPE_CHECKING:
    from huggingface_hub import HfApi

PREFIX = "hf:"
# Each folder fetch_cache returned, and the spec it was fetched for (hub_spec_of).
_FETCHED: dict[Path, str] = {}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A cache's own bookkeeping (journal, lock, verification memos, staging, temp names) stays home:
# every hidden file or folder, at the top or in eval/.
PRIVATE_PATTERNS = [".*", "*/.*"]
# What a push owns in the repo it pushes to. A remote file matching these and not in this upload
# is left from an earlier push (a cache of more shards, an eval/ this cache lacks, a full model's
# weights after an adapter) and is deleted in the same commit: the repo then holds exactly this
# upload, which readers of `shard-*.arrow` and `from_pretrained` need. Anything else there (a
# user's README.md card, .gitattributes, which huggingface_hub never deletes, notes) is kept.
# Patterns are fnmatch over repo paths, where `*` also matches `/`.
CACHE_PATTERNS = ["shard-*.arrow", MANIFEST_NAME, "tokenizer/*", "eval/*"]
# A model repo: only the top-level names save_pretrained (model, PEFT adapter, tokenizer) writes
# into final/, spelt without a leading `*` so a user's subfolder (onnx/model.safetensors,
# gguf/...) is never matched. A user's own generation_config.json or tokenizer file of these
# names is replaced or deleted too: beside other weights it would be wrong, so this is the safe
# side. The model card, README.md, is in every final/ and so is always replaced, never deleted.
MODEL_PATTERNS = [
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
]


# The cache's dataset card. Its YAML `configs:` are what `datasets.load_dataset(CACHE or ORG/NAME)`
# and the Hub's dataset viewer read: without them HF's default split patterns take eval/ for a
# `test` split, never read the top-level shards, and parse manifest.json and tokenizer/*.json as
# data. A rerun rewrites the card and a push replaces it while it holds the marker line (any
# wording after MARKER_START: earlier cards said it otherwise); without the line the user's edits
# are kept by reruns and pushes. --overwrite replaces the whole cache, the card too.
CARD_NAME = "README.md"
MARKER_START = "<!-- kto-precompute card:"
CARD_MARKER = (
    f"{MARKER_START} a rerun rewrites it while this line is here; delete the line to keep your edits (--overwrite replaces the whole cache, this file too) -->"
)


def card_config_name(fingerprint: str, eval_fingerprint: str | None) -> str:
    """The card's one config, named after the cache's fingerprints (12 hex digits each).

    datasets keeps its own copy of a local folder in HF_DATASETS_CACHE under the folder's base
    name, the config name and a hash of the card's `configs:`, which holds the glob patterns and
    not the files behind them (datasets 5.x load.py LocalDatasetModuleFactory). Named `default`,
    two caches in folders of one base name, or a folder rebuilt with --overwrite, shared one copy
    and `load_dataset(CACHE)` returned the first one loaded. Another fingerprint is another copy;
    one config is still picked without naming it. (A Hub repo's copy is keyed by its commit.)"""
    return f"kto-{fingerprint[:12]}" + (f"-{eval_fingerprint[:12]}" if eval_fingerprint else "")


def card_configs(with_eval: bool, flow: bool = False, name: str = "default") -> str:
    """The YAML `configs:` entry naming the splits' shards: `shard-*.arrow` at the top (which does
    not descend into eval/) is train, `eval/shard-*.arrow` eval. `flow`: on one line. `name`:
    card_config_name in a cache's own card; `default` in the line a push prints for a user's card
    on the Hub, whose copy datasets keys by the commit."""
    splits = [("train", SHARD_GLOB), *([("eval", f"{EVAL_DIR}/{SHARD_GLOB}")] if with_eval else [])]
    if flow:
        return f"configs: [{{config_name: {name}, data_files: [" + ", ".join(f"{{split: {s}, path: {p}}}" for s, p in splits) + "]}]"
    return f"configs:\n- config_name: {name}\n  data_files:\n" + "".join(f"  - split: {s}\n    path: {p}\n" for s, p in splits)


def card_text(model: str, dtype: str, fingerprint: str, eval_fingerprint: str | None) -> str:
    """The README.md kto-precompute writes beside a finished cache's manifest (precompute/output.py)."""
    evaluation = f"; eval split in {EVAL_DIR}/, fingerprint `{eval_fingerprint}`" if eval_fingerprint else ""
    return (
        f"---\n{card_configs(eval_fingerprint is not None, name=card_config_name(fingerprint, eval_fingerprint))}tags:\n- kto\n- kto-precompute\n---\n\n"
        f"# kto-precompute cache\n\n"
        f"Reference log-probs of `{model}` ({dtype}) for offline KTO: Arrow IPC shards, `{MANIFEST_NAME}` and the tokenizer.\n"
        f"Fingerprint `{fingerprint}`{evaluation}.\n\n"
        f"- Train: `kto-train --cache hf:ORG/NAME` (this repo on the Hub) or `--cache PATH` (this folder)"
        f"{f', with `--eval-cache hf:ORG/NAME/{EVAL_DIR}`' if eval_fingerprint else ''}.\n"
        f'- Read: `pl.scan_ipc("{SHARD_GLOB}")` (polars), or `datasets.load_dataset` on this folder or repo.\n\n'
        f"{CARD_MARKER}\n"
    )


def is_kto_card(text: str) -> bool:
    return MARKER_START in text


def check_repo_id(repo_id: str, flag: str = "--push-to-hub") -> str:
    """`ORG/NAME` as the Hub spells repo ids; anything else is refused before any work starts."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise InputError(f"{flag} {repo_id}: not a hub repo id (ORG/NAME)")
    return repo_id


def is_hub_cache(spec: str | Path) -> bool:
    return str(spec).startswith(PREFIX)


def check_push(repo_id: str) -> None:
    """Before anything else a command does, what would make its push fail and costs nothing to
    check: offline mode, no token. One line naming --push-to-hub. The repo itself is met later
    (create_push_repo), once the command's own input checks passed."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, as read on import
        raise InputError(f"--push-to-hub {repo_id}: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set), so nothing can be uploaded")
    try:
        token = get_token()  # HF_TOKEN, then the token file of `hf auth login`
    except Exception as exc:  # HF_OIDC_RESOURCE set and its token exchange failed
        raise InputError(f"--push-to-hub {repo_id}: cannot get a Hugging Face token ({exception_line(exc)})") from exc
    if token is None:
        raise InputError(f"--push-to-hub {repo_id}: no Hugging Face token to upload with; set HF_TOKEN or run `hf auth login`")


def create_push_repo(repo_id: str, *, dataset: bool, private: bool) -> None:
    """The repo a push uploads to, met before the work (scoring, training) as transformers'
    Trainer meets it in its __init__: created now (private as asked); where it exists, or its
    namespace refuses this token a create, the Hub is asked whether the token may write there.
    A network, auth or name error, or a repo the token cannot write to, is one line naming
    --push-to-hub. Called once the command's own input checks passed (a refused input leaves no
    empty repo on the Hub), on the main process (on_main)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    kind = "dataset" if dataset else "model"
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=kind, private=private)  # not exist_ok: see below
        return  # made now by this token, which may then write there
    except Exception as exc:  # network, a name the Hub refuses, auth, a repo that exists
        refused = exc
        if _status(exc) not in (401, 403, 409):
            raise InputError(f"--push-to-hub {repo_id}: cannot create the {kind} repo ({exception_line(exc)})") from exc
    # 409: the repo exists. 401/403: no create in that namespace, yet a repo there may be one the
    # token writes to (a collaborator, a fine-grained token scoped to it). create_repo(exist_ok=True)
    # took both for "it exists, fine" wherever the repo could be read, so a public repo of another
    # user, or a read-only token, passed: the work ran, the upload was refused, and so was every
    # retry. The Hub's own write check (what HfApi.auth_check(write=True) asks) says which.
    try:
        _check_write(api, repo_id, kind)
    except HfHubHTTPError as exc:
        # 404 after a refused create: no such repo to write to, and none may be made; the create's reason says why.
        what, why = ("create", refused) if _status(exc) == 404 and _status(refused) != 409 else ("write to", exc)
        raise InputError(
            f"--push-to-hub {repo_id}: {_token_of(api)} cannot {what} the {kind} repo {repo_id} ({exception_line(why)}); "
            "push to a repo of yours, or use a token that can write there (HF_TOKEN, `hf auth login`)"
        ) from exc
    except Exception as exc:  # network
        raise InputError(f"--push-to-hub {repo_id}: cannot check that the token can write to the {kind} repo ({exception_line(exc)})") from exc


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _check_write(api: HfApi, repo_id: str, kind: str) -> None:
    """GET /api/{kind}s/{repo_id}/auth-check/write: 200 where the token may write to the repo,
    else an HfHubHTTPError (401, 403; 404: not there or not visible). Called directly, not with
    HfApi.auth_check, whose `write` argument the oldest huggingface_hub we allow may lack."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    response = get_session().get(f"{api.endpoint}/api/{kind}s/{repo_id}/auth-check/write", headers=build_hf_headers())
    hf_raise_for_status(response)


def _token_of(api: HfApi) -> str:
    """`the token of USER (role ROLE)` as whoami says it, or `the token` where it cannot say."""
    try:
        me = api.whoami()
    except Exception:  # an invalid token, the network: the line still says what was refused
        return "the token"
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    return f"the token of {me.get('name', '?')}" + (f" (role {role})" if role else "")


def push_folder(folder: Path, repo_id: str, *, dataset: bool, private: bool, message: str, retry: str = "") -> str:
    """Create `repo_id` (model or dataset repo; kept if it exists) and upload `folder` in one
    commit, hidden files left out, deleting in that commit the repo's files of an earlier push
    (CACHE_PATTERNS, MODEL_PATTERNS) that this upload does not hold. Returns the commit URL.
    `retry`: what a failed upload's line ends with, how to push again (the command's own rerun,
    which deletes as this does; `hf upload` would leave an earlier push's files beside these)."""
    from huggingface_hub import HfApi

    kind = "dataset" if dataset else "model"
    try:
        api = HfApi()
        api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
        keep_card = dataset and _users_card(api, repo_id)
        # delete_patterns: huggingface_hub lists the repo's files, matches them, and drops from the
        # deletions every path this upload writes; the deletions ride the upload's first commit.
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type=kind,
            commit_message=message,
            ignore_patterns=PRIVATE_PATTERNS + ([CARD_NAME] if keep_card else []),
            delete_patterns=(CACHE_PATTERNS + ([] if keep_card else [CARD_NAME])) if dataset else MODEL_PATTERNS,
        )
    except Exception as exc:  # network, auth, a name taken: one line for the user
        then = f"; {retry}" if retry else ""
        raise InputError(f"--push-to-hub {repo_id}: cannot upload {folder} ({exception_line(exc)}){then}") from exc
    if keep_card and (folder / CARD_NAME).is_file():
        configs = card_configs((folder / EVAL_DIR / MANIFEST_NAME).is_file(), flow=True)
        log(f"--push-to-hub {repo_id}: kept the repo's own {CARD_NAME}; for datasets.load_dataset and the dataset viewer, add to its YAML header: {configs}")
    return str(commit)


def _users_card(api, repo_id: str) -> bool:
    """Whether the dataset repo holds a README.md of the user's (one without CARD_MARKER): a push
    keeps it. A card of an earlier push (the marker there) is replaced, or deleted if this cache
    has none."""
    from huggingface_hub import hf_hub_download

    if not api.file_exists(repo_id, CARD_NAME, repo_type="dataset"):
        return False
    path = hf_hub_download(repo_id, CARD_NAME, repo_type="dataset")
    return not is_kto_card(Path(path).read_text(encoding="utf-8", errors="replace"))


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
        raise InputError(f"{flag} {spec}: cannot fetch from the hub ({exception_line(exc)})") from exc
    folder = local / sub if sub else local
    if not (folder / MANIFEST_NAME).is_file():
        raise InputError(f"{flag} {spec}: the dataset repo holds no kto-precompute cache (no {sub + '/' if sub else ''}{MANIFEST_NAME})")
    _FETCHED[folder] = str(spec)
    return folder


def hub_spec_of(folder: str | Path) -> str | None:
    """The `hf:ORG/NAME[/SUBDIR]` that fetch_cache turned into `folder` in this process, else None.
    A command printed for the user (the --resume one) names the repo as typed, not this
    machine's snapshot, which another machine, or this one after its HF cache is cleared, does
    not have; a local folder the user gave stays as given, whatever its path looks like."""
    return _FETCHED.get(Path(folder))
