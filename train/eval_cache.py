"""--eval-cache: the held-out rows kto-train evaluates on, checked before --out is touched.

They must be no training rows (by fingerprint, shared shard, the same input and id, or the same
token ids and label), and come from the same reference model, tokenizer, numerics and chat
template as --cache, or the eval rewards would measure the training rows or another reference.
Likewise --cache must be no eval split, and an input file of either cache edited since that cache
was made is said: its --data files, or for the eval split of a cache made with --eval-data, those
files (info.eval_data_paths; a cache made before they were recorded names none).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kto.formats import schema as S
from kto.formats.cache import ShardedCache, open_cache
from kto.formats.errors import InputError, log
from kto.formats.files import sha256_stream
from kto.formats.hub import hub_spec_of
from kto.formats.manifest import INPUT_SUFFIXES, same_model

if TYPE_CHECKING:
    import pyarrow as pa
    from accelerate import Accelerator

    from kto.formats.manifest import Manifest

    from .config import TrainConfig


def refuse_eval_split(cfg: TrainConfig, manifest: Manifest) -> None:
    """Refuse a --cache that is an eval split (content.split "eval": CACHE/eval, the rows
    kto-precompute held out): training on it trains on the rows meant to measure the run, and
    with --eval-cache CACHE (the two swapped) evaluates on the training rows besides. Said of
    --cache first, so the swapped case gets the same line."""
    if manifest.content.split != "eval":
        return
    held = Path(cfg.cache)
    # Resolved: `--cache .` from inside CACHE/eval has the parent `.` as typed (and the advice would
    # name `.` twice), and a link to CACHE/eval elsewhere names the folder holding the link.
    real = held.resolve().parent
    parent = str(real) if (real / S.MANIFEST_NAME).is_file() else "CACHE"
    spec = hub_spec_of(held)  # hf:ORG/NAME/eval: named as typed, not as this machine's snapshot
    if spec is not None:
        held, parent = spec, spec.removesuffix(f"/{S.EVAL_DIR}") if spec.endswith(f"/{S.EVAL_DIR}") else "CACHE"
    made_by = "--eval-data" if manifest.content.eval_inputs else "--eval-fraction"
    raise InputError(
        f"--cache {held}: the eval split of the cache {parent} (kto-precompute {made_by}), its rows held out from training; "
        f"pass --cache {parent} --eval-cache {held}"
    )


def changed_inputs(manifest: Manifest) -> list[tuple[Path, str, str]]:
    """(path, sha256 recorded, sha256 now) of each local input file the manifest records
    (Manifest.input_files) that is still a file kto-precompute could have read at its path
    (_input_digest) and holds other bytes now. A file moved or deleted since is no news (silent);
    so is one that cannot be read.

    Cost: each such file is hashed whole on every start (about 1 s per GB on one core). The
    manifest records no size to skip the hash with when the size differs: a new info key would
    change the manifest's pinned bytes (tests/test_pinned_outputs.py)."""
    changed = []
    for path, recorded in manifest.input_files():
        now = _input_digest(path)
        if now is not None and now != recorded:
            changed.append((path, recorded, now))
    return changed


# Never hashed, whatever link leads there: /proc/kmsg is a "regular file" whose read blocks forever
# (as root), and such files were never a --data input.
_SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _input_digest(path: Path) -> str | None:
    """sha256 of the file at `path`, or None where it is no file kto-precompute could have read.
    The path comes from info.data_paths, which no fingerprint covers: a cache made elsewhere
    decides it. So only a name of a type kto-precompute reads (INPUT_SUFFIXES), outside /proc,
    /sys and /dev (the link's target too: a linked data file is fine, followed), opened without
    blocking (a FIFO) and, by the opened file's own fstat, a regular file that is not empty."""
    if path.suffix.lower() not in INPUT_SUFFIXES:
        return None
    try:
        real = Path(os.path.realpath(path))
        if any(p.is_relative_to(d) for p in (path, real) for d in _SYSTEM_DIRS):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:  # closed below, in every case
            return sha256_stream(f)
    except OSError:
        return None
    finally:
        os.close(fd)


def note_changed_inputs(cfg: TrainConfig, train: ShardedCache, eval_cache: ShardedCache | None, accelerator: Accelerator) -> None:
    """One note for each input file of --cache (and of --eval-cache) edited since the cache was
    made: its rows are the file as it was then. A note, not a refusal: the edit may be meant for a
    later cache. The main process hashes; the others have nothing to say. A cache fetched from the
    hub (hub_spec_of) is not looked at: its paths are the machine's that made it, not this one's."""
    if not accelerator.is_main_process:
        return
    said = set()
    for flag, value, cache, use in (("--cache", cfg.cache, train, "train on"), ("--eval-cache", cfg.eval_cache, eval_cache, "evaluate on")):
        local = cache is not None and hub_spec_of(cache.dir) is None
        for path, recorded, now in changed_inputs(cache.manifest) if local else ():
            if path not in said:
                said.add(path)
                log(
                    f"note: {flag} {value} was made from {path} (sha256 {recorded[:12]}…), which has changed since (now {now[:12]}…); "
                    f"rerun kto-precompute to {use} its rows as they are now",
                    accelerator,
                )


def check_held_out(eval_manifest: Manifest, train_manifest: Manifest, cfg: TrainConfig) -> None:
    """Refuse an eval cache that holds training rows. The same fingerprint means the same inputs,
    split, seed and scoring, i.e. the same rows; a shard with the same sha256 holds the same rows
    (the shard carries its cache's fingerprint). Both read the manifests only."""
    where = f"--eval-cache {cfg.eval_cache}"
    if eval_manifest.fingerprint == train_manifest.fingerprint:
        raise InputError(
            f"{where}: the same rows as --cache {cfg.cache} (same fingerprint {train_manifest.fingerprint[:16]}…); evaluate on a held-out split such as CACHE/eval"
        )
    train_shards = {s.sha256: s.name for s in train_manifest.shards}
    shared = [(s.name, train_shards[s.sha256]) for s in eval_manifest.shards if s.sha256 in train_shards]
    if shared:
        name, train_name = shared[0]
        raise InputError(f"{where}: its {name} is --cache {cfg.cache}'s {train_name} (same sha256): the eval rows are training rows")


def same_input(a: dict, b: dict) -> bool:
    """Two manifest input records name the same rows: the same file bytes or hub dataset, config
    and split. Not the name (a renamed copy holds the same rows), nor a hub revision (a later
    revision of one split keeps its ids for its rows). A local `datasets` directory's sha256
    covers all its files, so its train and test splits differ by their split alone."""
    key = lambda i: (i.get("sha256"), i.get("dataset"), i.get("config"), i.get("split"))
    return key(a) == key(b)


def check_no_shared_rows(eval_cache: ShardedCache, train: ShardedCache, cfg: TrainConfig) -> None:
    """Refuse eval rows that are training rows of another split of the same input: the same
    input (`same_input`) and the same id are the same row (another --seed or --eval-fraction of
    one file splits it otherwise). Reads the id columns only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    inputs = lambda c: c.manifest.content.row_inputs
    if not any(same_input(a, b) for a in inputs(eval_cache) for b in inputs(train)):
        return
    ids = pa.chunked_array([eval_cache.open_shard(k).column(S.ID) for k in range(eval_cache.num_shards)]).unique()
    shared = []
    for k in range(train.num_shards):
        column = train.open_shard(k).column(S.ID)
        shared += pc.filter(column, pc.is_in(column, value_set=ids)).to_pylist()
    if shared:
        raise InputError(
            f"--eval-cache {cfg.eval_cache}: {len(shared)} of its rows are training rows of --cache {cfg.cache} (the same input file and id, "
            f"e.g. {min(shared)!r}); evaluate on the held-out split of the training cache, CACHE/eval"
        )


def check_no_shared_content(eval_cache: ShardedCache, train: ShardedCache, cfg: TrainConfig, accelerator: Accelerator | None) -> None:
    """Eval rows whose token ids and label are a training row's, whatever file or id they came
    from: an eval cache precomputed from a renamed copy of the training file, or from its rows
    written out again, scored training rows with no word. All of them shared is refused; some
    (a question both splits of a public dataset hold) is said, with how many. The eval rows'
    keys are held (a hash each); the training rows stream past them, one shard at a time."""
    held = {key for k in range(eval_cache.num_shards) for key in _row_keys(eval_cache.open_shard(k))}
    shared = set()
    for k in range(train.num_shards):
        shared.update(key for key in _row_keys(train.open_shard(k)) if key in held)
    if not shared:
        return
    said = f"--eval-cache {cfg.eval_cache}: {len(shared)} of its {len(held)} distinct rows are --cache {cfg.cache} rows (the same token ids and label)"
    if len(shared) == len(held):
        raise InputError(f"{said}; evaluation would score rows trained on: evaluate on a held-out split such as CACHE/eval")
    log(f"warning: {said}: their eval numbers are on rows trained on", accelerator)


def _mismatch(part: str, cfg: TrainConfig, held: ShardedCache, train: ShardedCache) -> str:
    """The refusal of an eval cache made with another `part` than --cache; for the model, both
    models as their manifests record them (kto-precompute's --model), which no identity hash says."""
    if part != "model":
        return f"--eval-cache {cfg.eval_cache}: made with another {part} than --cache {cfg.cache}"
    a, b = held.manifest.reference_model, train.manifest.reference_model
    same = ", the same path: the files there changed between the two" if a == b else ""
    return (
        f"--eval-cache {cfg.eval_cache}: made with another model ({a}) than --cache {cfg.cache} ({b}{same}); "
        "its rewards would be measured against another reference"
    )


def _row_keys(table: pa.Table) -> Iterator[int]:
    """A hash of each row's (label, prompt ids, completion ids), from the list columns' flat values."""
    labels = table.column(S.LABEL).to_pylist()
    columns = []
    for name in (S.PROMPT_IDS, S.COMPLETION_IDS):
        lists = table.column(name).combine_chunks()
        columns.append((np.asarray(lists.offsets), np.asarray(lists.values)))
    (po, pv), (co, cv) = columns
    for i, label in enumerate(labels):
        yield hash((label, pv[po[i] : po[i + 1]].tobytes(), cv[co[i] : co[i + 1]].tobytes()))


def open_eval_cache(cfg: TrainConfig, train: ShardedCache, accelerator: Accelerator | None = None) -> ShardedCache | None:
    """The eval cache must come from the same reference model, tokenizer, numerics and chat
    template as the training cache, or its rewards would be measured against another reference
    or on prompts rendered otherwise; other length limits are said."""
    if cfg.eval_cache is None:
        return None
    manifest = train.manifest
    cache = open_cache(cfg.eval_cache)
    check_held_out(cache.manifest, manifest, cfg)  # manifests only: a training shard copied in is named as such first
    cache.lengths()  # every shard present and readable before --out is touched
    check_no_shared_rows(cache, train, cfg)
    check_no_shared_content(cache, train, cfg, accelerator)
    held, trained = cache.manifest.content, manifest.content
    same = {
        "model": same_model(held.model, trained.model),
        "tokenizer": held.tokenizer == trained.tokenizer,
        # The reference's numerics and the prompts' rendering: a bf16 eval cache beside an fp32 one
        # put the reference's rounding into every eval reward (KL -1.1e-3 one step from the
        # reference), and another template scores prompts in a format training never saw.
        "dtype": held.dtype == trained.dtype,
        "chat template": (held.chat_template, held.chat_template_kwargs) == (trained.chat_template, trained.chat_template_kwargs),
    }
    for part, ok in same.items():
        if not ok:
            raise InputError(_mismatch(part, cfg, cache, train))
    cut = [
        f"{k} {getattr(held, k)} there, {getattr(trained, k)} in --cache"
        for k in ("max_length", "max_prompt_length")
        if getattr(held, k) != getattr(trained, k)
    ]
    if cut:  # may be meant (longer held-out rows), but its prompts are cut otherwise than training's
        log(f"note: --eval-cache {cfg.eval_cache} was made with other length limits ({'; '.join(cut)})", accelerator)
    return cache
