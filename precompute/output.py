"""The output directory: is it ours, can we resume into it, and what goes into each shard.

Ownership is proven, never assumed (see formats/shards.py `Journal`): a shard is the cache's when the journal or
the manifest names it, tokenizer/ when the journal recorded its exact files, eval/ when it is a
cache folder of ours itself. Anything else in `--out` is foreign: it is refused with one line,
`--overwrite` included, and never deleted. A cache of another configuration is refused unless
`--overwrite`, which builds the new cache aside, in `OUT/.next/` (`NEXT`: inside the lock, on
the same filesystem), once the new run's input was read and checked (`begin_aside`), and swaps
it in only when it is complete (`swap_in`): the old cache's own files removed (its manifest
first, its journal last; eval/ and tokenizer/ renamed aside to `.NAME.deleted-PID` first), the new one's renamed into OUT (its manifest last). So a cache never
mixes rows from two configurations, a user's files never vanish, bad input leaves the old cache
whole, and the old cache stays whole and verifiable while the new one is scored: a kill then
leaves it so, and the same command resumes the build in `.next/`. A kill during the swap leaves
`.next/` holding a finished manifest (or, past the journal's rename, less): the same command
finishes the swap first (`finish_swap`).

Temp names a killed run left are removed only when this cache's writers make exactly that name
(`cache_writes_temp`: the NAME one of ours, the kind the one its writer uses, the suffix
formats/atomic.py's) in a folder the journal or the manifest proves is a cache of ours; any
other name, `.photos.old-2023/` or `.notes.tmp-1` included, is foreign and refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from kto.formats import schema as S
from kto.formats.atomic import aside_path, parse_temp_name, remove_stale_temps, rename_into_place, write_bytes_atomic
from kto.formats.compute.tokenizer_check import TOKENIZER_CHECK_NAME
from kto.formats.errors import InputError, on_main
from kto.formats.files import output_dir
from kto.formats.hub import CARD_NAME, card_text, is_kto_card
from kto.formats.lock import LOCK_NAME, lock_state, locked_dir, manifests_locked, reads_as_lock
from kto.formats.manifest import CacheContent, Manifest, fingerprint_of, read_manifest, same_model
from kto.formats.shards import JOURNAL_DIR, NEXT_DIR, RUN, TOKENIZER, VERIFIED_NAME, Journal

from .staging import is_staging_name, staging_files

# Ours by name in a folder that the journal or the manifest proves a cache of ours: the lock
# (held while we write; formats/lock.py refuses one that is not a plain file), kto-train's
# verification stamps (shards and tokenizer check). Elsewhere only a `.lock` that reads as ours
# (formats/lock.reads_as_lock: a kill right after the lock was taken leaves it alone); a user's `.lock` or
# `.verified.json` is foreign, never written over. The journal is ours only when it holds
# nothing but journal files (`own_journal`): a user's own `.journal/` is foreign.
BOOKKEEPING = {LOCK_NAME, VERIFIED_NAME, TOKENIZER_CHECK_NAME}
NEXT = NEXT_DIR  # where --overwrite builds the new cache, inside OUT, until swap_in
SHARD_NAME = re.compile(r"^shard-[0-9]{5}\.arrow$")  # schema.shard_name's shape


def cache_writes_temp(name: str, kind: str) -> bool:
    """A temp name that a writer of ours makes in a cache folder: files written through
    atomic_path / write_json_atomic (`tmp`), tokenizer/ through atomic_dir (`tmp`, and `old`
    for the copy it replaces); tokenizer/ and eval/ renamed aside by `_remove` (`deleted`)."""
    if name == S.TOKENIZER_DIR:
        return kind in ("tmp", "old", "deleted")
    if name == S.EVAL_DIR:
        return kind == "deleted"
    files = (S.MANIFEST_NAME, CARD_NAME, VERIFIED_NAME, TOKENIZER_CHECK_NAME)
    return kind == "tmp" and (name in files or SHARD_NAME.match(name) is not None or is_staging_name(name) or _older_shard_temp(name))


def _older_shard_temp(name: str) -> bool:
    """NAME is itself a shard's temp name: `..shard-N.arrow.tmp-P-T.tmp-P-T`, what an earlier
    kto's journal (a shard written under a temp name, through atomic_path, which took a temp
    name of its own) left behind a kill mid-write."""
    inner = parse_temp_name(name)
    return inner is not None and inner[1] == "tmp" and SHARD_NAME.match(inner[0]) is not None


def journal_writes_temp(name: str, kind: str) -> bool:
    """NAME is a file the journal (formats/shards.py) writes in `.journal/`, and `kind` is "file" (the file itself) or
    "tmp" (the temp name of its atomic write)."""
    return kind in ("file", "tmp") and (name in (RUN, TOKENIZER) or (name.endswith(".json") and SHARD_NAME.match(name.removesuffix(".json")) is not None))


def remove_own_temps(folder: Path) -> None:
    """Clear the temp names a killed run of ours left in a cache folder and its journal; only
    where the journal or the manifest proves the folder a cache of ours, and in a `.journal/`
    that holds nothing but journal files. Call it holding the cache's lock."""
    if not folder.is_dir() or folder.is_symlink():
        return
    if Journal(folder).run() is not None or own_manifest(folder) is not None:
        remove_stale_temps(folder, owns=cache_writes_temp)
    journal = folder / JOURNAL_DIR
    if own_journal(journal, temps_pending=True):
        remove_stale_temps(journal, owns=lambda name, kind: kind == "tmp" and journal_writes_temp(name, kind))


def shard_layout(rows_per_shard: int, batch_tokens: int, prefix_sharing: bool) -> dict:
    """The part of the layout that decides shard bytes: which rows go where, and the batching.

    The process count is recorded in the manifest but is not part of it: shard contents do not
    depend on it, so a crashed 8-process run may be resumed with 4. Prefix sharing is layout,
    not content: its numbers equal the plain layout's to fp32 rounding (bit for bit on some
    CPUs), so a cache made either way serves the same runs;
    but the bytes may differ, so one cache never mixes the two.
    """
    return {"rows_per_shard": rows_per_shard, "batch_tokens": batch_tokens, "prefix_sharing": prefix_sharing}


def recorded_batch_tokens(out: Path) -> int | None:
    """The --batch-tokens that the cache (or unfinished run) in `out` was scored with, if any.

    --batch-tokens' default depends on the device (formats/compute/scoring.py), and the budget
    decides shard bytes: a rerun that leaves it out resumes with the budget already there, on
    any device, rather than being refused as another layout."""
    record = _record(out)
    layout = record.get("layout") if record is not None else None
    value = layout.get("batch_tokens") if isinstance(layout, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def prepare_out_dir(out: Path, content: CacheContent, layout: dict, overwrite: bool) -> bool:
    """Check that `out` can take a run of `content`: resume it, or refuse; True when it holds a
    cache of another configuration that `overwrite` replaces. That cache is left whole here, and
    while the new one is built in `.next/` (begin_aside): `swap_in` removes it once the new cache
    is complete, so a bad row costs nothing (a hunter's `--overwrite` whose last row read
    "label": "maybe" deleted it first), nor does a kill while scoring.

    Call it holding the lock on the cache (formats/lock.py): it removes the temp files a killed
    run left, which a live writer's would look like.
    """
    output_dir(out, f"--out {out}")
    with_eval = content.split != "eval"
    for folder in (out, out / S.EVAL_DIR) if with_eval else (out,):
        remove_own_temps(folder)
    refuse_foreign(out, with_eval=with_eval)
    reason = _stale_reason(out, content.fingerprint, layout, content.to_json())
    if reason and not overwrite:
        raise InputError(f"--out {out}: {reason}; pass --overwrite to replace it or choose another directory")
    return reason is not None


def refuse_foreign(out: Path, *, with_eval: bool, temps_pending: bool = False) -> list[Path]:
    """The cache's own entries of `out`; InputError naming the foreign ones, if any.

    `temps_pending`: before the lock is taken (claim_out), our own temp names are not cleared
    yet and count as ours; the check then keeps the lock file out of a directory not ours."""
    if not out.is_dir():
        return []
    ours, foreign = survey(out, with_eval=with_eval, temps_pending=temps_pending)
    if foreign:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in foreign)
        raise InputError(
            f"--out {out}: holds {', '.join(names[:3])}{', …' if len(names) > 3 else ''}, which this cache did not write; "
            "move it away or choose another directory (--overwrite replaces only what a kto cache wrote)"
        )
    return ours


def survey(folder: Path, *, with_eval: bool, temps_pending: bool = False, top: bool = True, moved: bool = True) -> tuple[list[Path], list[Path]]:
    """Split a cache folder's entries into the cache's own (provably) and foreign ones. `top`:
    the cache's own folder, not its eval/ (where no card is written: a README.md there is the user's).
    `moved`: count what swap_in already renamed out of a finished `.next/` (False: only what the
    folder's own journal and manifest prove, the old cache that swap_in removes)."""
    journal, manifest = Journal(folder), own_manifest(folder)
    listed = journal.shard_names() | {s.get("name") for s in manifest["shards"]} if manifest else journal.shard_names()
    proven = journal.run() is not None or manifest is not None
    # Half-way through swap_in, what already left `.next/` is proven by the journal still there.
    aside = Journal(folder / NEXT) if top and moved and aside_finished(folder / NEXT) else None
    if aside is not None:
        listed, proven = listed | aside.shard_names(), True
    ours, foreign = [], []
    for p in sorted(folder.iterdir()):
        temp = parse_temp_name(p.name) if temps_pending and proven and not p.is_symlink() else None
        if p.name in BOOKKEEPING:
            owned = proven or (p.name == LOCK_NAME and reads_as_lock(p))
        elif (is_staging_name(p.name) and p.is_file()) or (temp is not None and cache_writes_temp(*temp)):
            owned = True
        elif p.name == JOURNAL_DIR:
            owned = own_journal(p, temps_pending)
        elif p.name == S.MANIFEST_NAME:
            owned = manifest is not None
        elif p.name == CARD_NAME:
            owned = top and proven and p.is_file() and not p.is_symlink()  # the card, edited or not (write_card keeps an edited one)
        elif p.match(S.SHARD_GLOB):
            owned = p.name in listed and p.is_file() and not p.is_symlink()
        elif p.name == S.TOKENIZER_DIR:
            owned = journal.owns_tokenizer(p) or (aside is not None and aside.owns_tokenizer(p))
        elif p.name == NEXT and top:
            owned = own_aside(p, temps_pending)
        elif p.name == S.EVAL_DIR and with_eval:
            owned = _own_cache_folder(p, temps_pending) or (proven and _unstarted(p, temps_pending))
        else:
            owned = False
        (ours if owned else foreign).append(p)
    return ours, foreign


def write_card(out: Path, manifests: list[Manifest]) -> None:
    """Main process, after the manifests: the dataset card (formats/hub.py card_text) in --out,
    naming the train split and the eval split where the run made one. It is no part of the
    fingerprint, the manifest or any shard, so kto-train and kto-inspect verify read past it."""
    card = out / CARD_NAME
    if not (card.is_file() and edited_card(card)):
        write_bytes_atomic(card, _card_bytes(manifests))


def _card_bytes(manifests: list[Manifest]) -> bytes:
    by_split = {m.content.split: m for m in manifests}
    train, evaluation = by_split["train"], by_split.get("eval")
    model = str(train.info.get("model_path") or "the reference model")
    return card_text(model, train.content.dtype, train.fingerprint, evaluation.fingerprint if evaluation else None).encode()


def finished_as_before(outs: dict[str, Path], contents: dict, layout: dict, num_processes: int, info: dict) -> list[Manifest] | None:
    """Main process, before the lock and the staging: each split's cache in --out already what
    this run would leave there (its manifest of this content, layout, process count and info;
    each listed shard byte for byte what the journal recorded for this configuration, the sha256
    the manifest lists; the tokenizer the journal's; the card written), read without writing
    anything, with no other kto-precompute holding the lock and nothing there that the locked
    rerun would clear or refuse. Else None: the run goes on under the lock, which resumes, repairs or refuses. So a
    rerun on a finished cache needs neither write access nor free space (a cache on a read-only
    mount, another user's, one on a full disk), as kto-train and kto-inspect read it."""
    if (outs["train"] / NEXT_DIR).exists():  # an unfinished --overwrite: the lock's to finish or refuse
        return None
    if lock_state(outs["train"] / LOCK_NAME)[0]:  # another kto-precompute there (an --overwrite may be staging): the lock's to say
        return None
    manifests, as_typed = [], []
    for name, out in outs.items():
        try:
            manifest = read_manifest(out)
        except (InputError, OSError):
            return None
        if not _left_clean(out, name):
            return None
        journal, fingerprint = Journal(out), contents[name].fingerprint
        same = manifest.fingerprint == fingerprint and manifest.layout == {**layout, "num_processes": num_processes}
        typed = replace(manifest, info=info)  # as this run would hold it (the card names --model as typed)
        if not same or typed.as_written().info != manifest.info or not journal.owns_tokenizer(out / S.TOKENIZER_DIR):
            return None
        for entry in manifest.shards:
            if journal.recorded_sha(entry.name, fingerprint, layout) != entry.sha256 or not journal.is_done(entry.name, fingerprint, layout):
                return None
        manifests.append(manifest)
        as_typed.append(typed)
    card = outs["train"] / CARD_NAME
    if not card.is_file() or not (edited_card(card) or card.read_bytes() == _card_bytes(as_typed)):
        return None
    return manifests


def _left_clean(out: Path, split: str) -> bool:
    """Nothing in a split's folder that the locked rerun would clear (a killed run's temp names,
    a staging file) or refuse (what the cache did not write): otherwise that rerun's to do."""
    ours, foreign = survey(out, with_eval=split != "eval", top=split != "eval")
    return not foreign and not any(is_staging_name(p.name) for p in ours)


def edited_card(path: Path) -> bool:
    """A README.md in a cache is its card; the user's own edit once they took the marker line out
    (read up to 64 KiB: a card is a few hundred bytes). A rerun keeps an edited card, and
    --overwrite, which replaces the whole cache, replaces it."""
    with open(path, "rb") as f:
        return not is_kto_card(f.read(1 << 16).decode("utf-8", errors="replace"))


def own_journal(folder: Path, temps_pending: bool = False) -> bool:
    """`.journal/` is ours when it is a real folder of plain files named as the journal (formats/shards.py) names them
    (`temps_pending`: and our temp names, not cleared yet before the lock)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    for p in folder.iterdir():
        temp = parse_temp_name(p.name) if temps_pending else None
        named = journal_writes_temp(*temp) if temp else journal_writes_temp(p.name, "file")
        if not named or p.is_symlink() or not p.is_file():
            return False
    return True


def _record(folder: Path) -> dict | None:
    """What `folder`'s cache recorded of itself: its manifest, else its unfinished run's journal entry."""
    manifest = own_manifest(folder)
    return manifest if manifest is not None else Journal(folder).run()


def own_manifest(folder: Path) -> dict | None:
    """The manifest in `folder` as a dict when it reads as a kto manifest, else None."""
    try:
        obj = json.loads((folder / S.MANIFEST_NAME).read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: nested too deeply, so not ours
        return None
    ok = isinstance(obj, dict) and {"fingerprint", "content", "layout"} <= obj.keys() and isinstance(obj.get("shards"), list)
    return obj if ok and all(isinstance(s, dict) for s in obj["shards"]) else None


def _own_cache_folder(folder: Path, temps_pending: bool = False) -> bool:
    """eval/ is ours when it is a real folder holding an eval split, by its manifest or journal,
    and nothing foreign. A cache that kto-precompute wrote there as its own --out records the
    split "train": it is the user's, and --overwrite of the cache around it must not delete it."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    record = _record(folder)
    content = record.get("content") if isinstance(record, dict) else None
    if not isinstance(content, dict) or content.get("split") != "eval":
        return False
    return not survey(folder, with_eval=False, temps_pending=temps_pending, top=False)[1]


def _unstarted(folder: Path, temps_pending: bool) -> bool:
    """A split's folder whose journal was never started: nothing in it but a `.journal/` that
    holds no journal file yet (at most the temp name of its first, run.json, with `temps_pending`),
    or nothing at all. What a kill leaves there while Journal.start makes the folder with its
    first write; ours only inside a folder that the run's own journal already proves ours."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    entries = list(folder.iterdir())
    if not entries:
        return True
    journal = entries[0]
    return len(entries) == 1 and journal.name == JOURNAL_DIR and own_journal(journal, temps_pending) and all(parse_temp_name(p.name) for p in journal.iterdir())


def own_aside(folder: Path, temps_pending: bool = False) -> bool:
    """`.next/` is ours when it is a real folder holding nothing but a cache of ours (an --overwrite
    build: its journal or manifest proves it, its eval/ a cache folder of ours), or nothing at all
    (a swap that stopped before removing it)."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if not any(folder.iterdir()):
        return True
    return _record(folder) is not None and not survey(folder, with_eval=True, temps_pending=temps_pending, top=False)[1]


def aside_finished(folder: Path) -> bool:
    """`.next/` holds a finished build: its manifest was written, so swap_in may have begun."""
    return folder.is_dir() and not folder.is_symlink() and own_manifest(folder) is not None


def _stale_reason(out: Path, fingerprint: str, layout: dict, content: dict) -> str | None:
    """Why `out` holds (part of) a cache of another configuration, or None."""
    # The manifest first: a finished cache keeps its journal (the record resume trusts), so a run
    # recorded there is unfinished only where no manifest was written.
    manifest = own_manifest(out)
    if manifest is not None:
        old_layout = {k: manifest["layout"].get(k) for k in layout} if isinstance(manifest["layout"], dict) else None
        if manifest["fingerprint"] != fingerprint or old_layout != layout:
            return _difference(manifest["content"], old_layout, content, layout, "the cache")
    run = Journal(out).run()
    if run is not None and (run.get("fingerprint") != fingerprint or run.get("layout") != layout):
        what = "the unfinished run" if manifest is None else "a run recorded"
        return _difference(run.get("content"), run.get("layout"), content, layout, what)
    journal = Journal(out)
    other = sorted(n for n in journal.shard_names() if journal.recorded_sha(n, fingerprint, layout) is None)
    if other:
        return f"holds shards of a different configuration ({', '.join(other[:3])}{', …' if len(other) > 3 else ''})"
    return None


def _difference(old: dict | None, old_layout: dict | None, new: dict, layout: dict, what: str) -> str:
    """One clause naming what changed: the input files first (the likeliest), else each key with
    its value there and now (`max_length (128 there, 256 now)`, as kto-train's --resume refusal
    says them), long values by a hash prefix so that the message stays one line."""
    if not isinstance(old, dict):
        return f"holds {what} of a different configuration"
    before = {i.get("name"): i.get("sha256") for i in old.get("inputs") or [] if isinstance(i, dict)}
    # A hub dataset's identity has a revision, no sha256: said field by field below (_inputs_clause).
    changed = [i for i in new["inputs"] if "sha256" in i and i["name"] in before and before[i["name"]] not in (None, i["sha256"])]
    if changed and set(before) == {i["name"] for i in new["inputs"]}:
        i = changed[0]
        return f"--data {i['name']} changed since {what} there read it (sha256 {str(before[i['name']])[:12]}… then, {i['sha256'][:12]}… now)"
    differ = sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k))
    there = old_layout if isinstance(old_layout, dict) else {}
    layout_differs = [k for k in layout if there.get(k) != layout[k]]
    if what == "the cache" and any(k in RULE_KEYS for k in differ) and not layout_differs and all(_earlier_wording(k, old, new) for k in differ):
        # The same command: only how an earlier kto worded its rules (or recorded the model) differs.
        # Said of a finished cache only: an unfinished one no kto-train reads, and --overwrite costs nothing.
        return (
            f"holds {what} that an earlier kto made with these settings, its rules worded otherwise then ({', '.join(differ)}; the rows "
            "may come out the same, but the fingerprint differs); kto-train still reads it, and a run begun on it resumes only on it, "
            "so another --out keeps such runs resumable"
        )
    clauses = [c for k in differ for c in _key_clauses(k, old, new)]
    clauses += [_clause(k, there.get(k, _ABSENT), layout[k]) for k in layout_differs]
    return f"holds {what} of a different configuration (differs in {', '.join(clauses) or 'its fingerprint'})"


# Content keys that hold a rule in words (formats/manifest.py CacheContent): a kto that words one
# otherwise makes a cache of the same command differ there, and only there.
RULE_KEYS = ("truncation", "kl_pairing", "eval_split")


def _earlier_wording(key: str, old: dict, new: dict) -> bool:
    """Whether `key` differs only as an earlier kto recorded it: a rule worded otherwise (both
    sides in words), the `reading` rule not recorded yet, or the model's identity in the format
    of before small tensors were hashed (the same weights)."""
    a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if key in RULE_KEYS:
        return isinstance(a, str) and isinstance(b, str)
    if key == "reading":
        return a is _ABSENT
    return key == "model" and _older_identity(a, b)


def _older_identity(a: object, b: object) -> bool:
    """The same weights identified in an earlier kto's format (before small tensors were
    hashed): same_model, with its hub revision on both sides or neither. A hub id on one side
    and a local copy of its files on the other are one model too, but no earlier format: that
    clause names the revision instead."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    return ("hub_revision" in a) == ("hub_revision" in b) and same_model(a, b)


_ABSENT = object()  # a key one side lacks
_HEX = re.compile(r"^[0-9a-f]{40,64}$")  # a sha256 as the content records hashes, a git commit (a hub revision)


def _key_clauses(key: str, old: dict, new: dict) -> list[str]:
    """What differs under one content key: `key (X there, Y now)`; a dict on both sides by its
    own keys (`columns.prompt (prompt there, question now)`), the inputs by their names."""
    a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if key == "model" and _older_identity(a, b):
        # The same weights, identified by an earlier kto (before small tensors were hashed).
        return ["the model identity's format: an earlier kto made it, the weights may be the same"]
    if key == "reading" and a is _ABSENT:  # a cache made before the rule was recorded
        return [
            "reading: an earlier kto made it, before its rows were read the current way (README, Input data); kto-train still reads it,"
            " and a run begun on it resumes only on it, so rebuild into another --out to keep such runs resumable"
        ]
    if key in ("inputs", "eval_inputs") and _entries(a) and _entries(b):
        return [_inputs_clause(key, a, b)]
    if isinstance(a, dict) and isinstance(b, dict):
        return [_clause(f"{key}.{k}", a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return [_clause(key, a, b)]


def _entries(value: object) -> bool:
    """A list of input identities (records.input_identity: dicts with a name)."""
    return isinstance(value, list) and all(isinstance(i, dict) for i in value)


def _inputs_clause(key: str, old: list[dict], new: list[dict]) -> str:
    """The inputs there and now by name, and what tells them apart: the same bytes renamed (the
    name is identity: rows without an id column take their ids from it, and errors name rows
    by it), the same files in another order (other rows' order, split and KL partners), or, under
    the same names, each entry's differing fields (a sha256, a hub revision)."""
    names_there, names_now = [str(i.get("name")) for i in old], [str(i.get("name")) for i in new]
    if names_there == names_now:
        parts = [f"{name} ({_entry_changes(o, n)})" for name, o, n in zip(names_now, old, new) if o != n]
        return f"{key} {', '.join(parts)}"

    def unnamed(i: dict) -> dict:
        return {k: v for k, v in i.items() if k != "name"}

    renamed = [unnamed(o) == unnamed(n) for o, n in zip(old, new) if o.get("name") != n.get("name")] if len(old) == len(new) else []
    note = ""
    if sorted(map(_shown_json, old)) == sorted(map(_shown_json, new)):
        note = ": the same files in another order"
    elif renamed and all(renamed) and all(o == n for o, n in zip(old, new) if o.get("name") == n.get("name")):
        note = ": the same sha256, but rows without an id column take their ids from the file name; give it its old name to reuse this cache"
    elif renamed and not any(renamed):
        note = ": other bytes"
    return f"{key} ({', '.join(names_there) or 'none'} there, {', '.join(names_now) or 'none'} now{note})"


def _entry_changes(there: dict, now: dict) -> str:
    """`sha256 X there, Y now` for each field of one input's identity that differs."""
    keys = sorted(k for k in there.keys() | now.keys() if there.get(k) != now.get(k))
    return "; ".join(f"{k} {_sides(there.get(k, _ABSENT), now.get(k, _ABSENT))}" for k in keys)


def _clause(key: str, there: object, now: object) -> str:
    """`key (X there, Y now)`, kto-train's way (train/resume_record.py record_differences)."""
    return f"{key} ({_sides(there, now)})"


def _sides(there: object, now: object) -> str:
    return f"{_show(there)} there, {_show(now)} now"


def _show(value: object) -> str:
    """A recorded value for the one-line refusal: a sha256 by its first 12 digits, a long or
    multi-line text by a hash prefix and its length, a dict or list as compact JSON when short,
    else by a hash prefix (an identity)."""
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str):
        if _HEX.match(value):
            return f"{value[:12]}…"
        if len(value) <= 40 and value.isprintable():
            return value
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
        return f"sha256 {digest[:12]}…, {len(value)} chars"
    if isinstance(value, (dict, list)):
        text = _shown_json(value)
        return text if len(text) <= 60 and text.isprintable() else f"identity {fingerprint_of(value)[:12]}…"
    return str(value)


def _shown_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _remove(entries: list[Path], keep: Collection[str] = (LOCK_NAME,)) -> None:
    """Delete the cache's own entries but those named in `keep` (the held lock, the new run's
    staging files, `.next/`); the manifest first (a folder half removed never reads as a finished
    cache), the journal last (it is what proves the rest are ours, so a kill half-way leaves them
    removable by the next --overwrite)."""
    for p in sorted(entries, key=lambda p: (p.name != S.MANIFEST_NAME, p.name == JOURNAL_DIR)):
        if p.name in keep:
            continue
        if p.name in (S.EVAL_DIR, S.TOKENIZER_DIR) and p.is_dir() and not p.is_symlink():
            # Renamed aside first: a kill half-way through deleting it leaves `.NAME.deleted-PID`,
            # a temp name the next run clears (cache_writes_temp), not a half-empty eval/ or
            # tokenizer/ that no journal proves ours any more and that every rerun would refuse.
            doomed = aside_path(p, "deleted")
            os.rename(p, doomed)
            shutil.rmtree(doomed)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def claim_out(cfg, outs: dict[str, Path], contents: dict, layout: dict, state, held: contextlib.ExitStack) -> list[Path]:
    """Main process: lock --out, then resume or refuse each split's folder; the others wait.

    Returns the folders whose cache of another configuration --overwrite replaces (every rank
    gets the list). They stay as they are, journal included, until `swap_in`: the new cache is
    built in `OUT/.next/` (`begin_aside`, once its rows were read and checked), so a bad input or
    a kill leaves the old cache whole. A swap that a kill stopped half-way is finished here first
    (`finish_swap`), the one way back to a folder that is one cache.
    The lock is taken before any process writes (the others only start after the broadcast),
    and a refusal reaches every process, so none is left waiting in a collective.
    """

    def prepare() -> list[Path]:
        for name, out in outs.items():  # before the lock file: nothing is written into a folder not ours
            refuse_foreign(out, with_eval=contents[name].split != "eval", temps_pending=True)
        held.enter_context(locked_dir(cfg.out, "--out"))
        finish_swap(cfg.out, cfg.overwrite)
        stale = [out for name, out in outs.items() if prepare_out_dir(out, contents[name], layout, cfg.overwrite)]
        if not stale:
            _remove_aside(cfg.out)  # an --overwrite build of another configuration, given up
            for name, out in outs.items():
                Journal(out).start(contents[name].fingerprint, layout, contents[name].to_json())
        return stale

    return on_main(prepare, state)


def finish_swap(out: Path, overwrite: bool) -> None:
    """Holding the lock: refuse an unfinished --overwrite in `out` without --overwrite (the old
    cache is never silently kept beside, or mixed with, the new one), and finish a swap that a
    kill stopped half-way (swap_in again: each step is skipped once done)."""
    nxt = out / NEXT
    if not nxt.is_dir() or nxt.is_symlink():
        return
    begun = aside_finished(nxt) or Journal(nxt).run() is None
    if not overwrite:
        keep = "" if begun else f", or remove {nxt} to keep the cache there"
        raise InputError(
            f"--out {out}: holds an unfinished --overwrite ({nxt} holds the new cache{' half swapped in' if begun else ''});"
            f" pass --overwrite to finish it{keep}"
        )
    remove_own_temps(nxt)
    remove_own_temps(nxt / S.EVAL_DIR)
    if begun:
        swap_in(out)


def aside_outs(out: Path, outs: dict[str, Path]) -> dict[str, Path]:
    """Where --overwrite builds each split: the same folder under `OUT/.next/`."""
    return {name: out / NEXT / folder.relative_to(out) for name, folder in outs.items()}


def begin_aside(out: Path, outs: dict[str, Path], contents: dict, layout: dict, state) -> None:
    """Main process, once the new run's rows were staged and checked: start the journal of each
    split's folder in `OUT/.next/` (`outs`, from aside_outs). An unfinished build there of this
    configuration is resumed; one of another is removed (it is ours: its journal proves it)."""

    def begin() -> None:
        nxt = out / NEXT
        if nxt.is_dir() and any(_stale_reason(o, contents[n].fingerprint, layout, contents[n].to_json()) for n, o in outs.items()):
            _remove_aside(out)
        for name, folder in outs.items():
            Journal(folder).start(contents[name].fingerprint, layout, contents[name].to_json())

    on_main(begin, state)


def _remove_aside(out: Path) -> None:
    nxt = out / NEXT
    if nxt.is_dir() and not nxt.is_symlink():
        _remove(refuse_foreign(nxt, with_eval=True), keep=())
        nxt.rmdir()


def swap_in(out: Path) -> None:
    """Main process, holding the lock, once `OUT/.next/` holds a finished cache: replace the old
    cache in `out` by it. The old cache's own entries go first (not the lock, the staging files
    or `.next/`; its manifest first, its journal last), then each new entry is renamed into `out`:
    shards, tokenizer/ and eval/, then the journal, then the manifest, then `.next/` is removed.
    Not atomic for the folder, but the gap is renames; a kill at any point leaves a state the
    same command finishes (finish_swap): until the journal's rename, `.next/`'s journal proves
    what already moved (survey), and `out`'s own journal or manifest what of the old is left.

    Readers: it all happens holding an exclusive lock on the old manifests (`out`'s and its
    eval/'s, formats/lock.py manifests_locked), so it waits for a reader that is opening the
    cache (formats/cache.py open_cache: it holds a shared one while it reads the manifest and
    opens every shard). A reader that opened it before keeps reading the old cache to its end:
    the shards removed here are unlinked (eval/ renamed aside first), and their inodes stay
    readable through its descriptors. One that opens it during the renames finds no manifest
    (the old one goes first, the new one comes last) and is told a kto-precompute writes it."""
    nxt = out / NEXT
    with manifests_locked([out / S.MANIFEST_NAME, out / S.EVAL_DIR / S.MANIFEST_NAME]):
        if (nxt / JOURNAL_DIR).is_dir():
            if (out / JOURNAL_DIR).is_dir() or own_manifest(out) is not None:  # the old cache, or what is left of it
                keep = {LOCK_NAME, NEXT, *(p.name for p in staging_files(out))}
                _remove(survey(out, with_eval=True, moved=False)[0], keep=keep)
            for p in sorted(nxt.iterdir()):
                if p.name not in (JOURNAL_DIR, S.MANIFEST_NAME):
                    _move(p, out / p.name)
            _move(nxt / JOURNAL_DIR, out / JOURNAL_DIR)
        if (nxt / S.MANIFEST_NAME).is_file():
            _move(nxt / S.MANIFEST_NAME, out / S.MANIFEST_NAME)
    nxt.rmdir()


def _move(src: Path, dst: Path) -> None:
    """One rename of swap_in (tests make it fail to stop a swap half-way)."""
    rename_into_place(src, dst)


def remove_staging(out: Path, keep: set[Path]) -> None:
    """Remove the staging files in `out` but those in `keep` (there before this run): a run
    refused on its input leaves the cache it was to replace as it found it."""
    for p in staging_files(out) - keep:
        p.unlink()
