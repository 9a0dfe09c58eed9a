"""What a `--resume` must match: the run's record (RUN/kto_run.json, `config_record` plus what
setup.py derives) against this command's, setting by setting. Which settings may change
(RESUMABLE, the paths, the eval cache), which are compared by what they came to rather than as
written (the precision in force, the model's identity, the LoRA targets, settings recorded since
a later version), the digest every checkpoint carries of the rest (`settings_digest`), and the
words of a refusal (each difference named, the way out where there is one). The run directory
itself (whose it is, its lock, its checkpoints) is rundir.py's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kto.formats.manifest import fingerprint_of, same_model
from kto.formats.runrecord import EVAL_AT_START, EVAL_FINGERPRINT, REFERENCE_IDENTITY, eval_cache_at_start

from .adapters import keep_recorded_targets, same_targets

if TYPE_CHECKING:
    from .config import TrainConfig


# Settings that may differ on --resume: how often things are logged, saved and evaluated, on
# what (the eval cache: EVAL_DERIVED) and in what batches, where metrics go, and memory/speed
# knobs whose maths is the same. Everything else (β, loss, weights, LR and its schedule, batch
# shape, steps, seed, KL scope, precision, dropout, data, model, attention kernel) decides the
# numbers, and a resume that changed it would silently train a different run than the one its
# metrics describe. Paths are not compared: the cache and the initial model are compared by
# their identities in "derived", so a moved cache or model still resumes.
# prefix_sharing is not among them: it also decides the epoch plan (prompt groups in one
# micro-batch, train/data.py), which a resumed run must rebuild as it was.
RESUMABLE = frozenset(
    {
        "log_every",
        "save_every",
        "eval_every",
        "eval_each_epoch",
        "eval_batch_size",
        "save_each_epoch",
        "save_total_limit",
        "report_to",
        "run_name",
        "drift_tolerance",
        "chunk_size",
        "gradient_checkpointing",
        "trust_remote_code",
        # What final/ also writes, and how the same maths is sharded (the checkpoint's own kind is
        # checked against the running FSDP state, which accelerate's environment may turn on too).
        "merge_adapters",
        "fsdp",
        # Where final/ is uploaded afterwards: no number depends on it.
        "push_to_hub",
        "hub_private",
    }
)
PATHS = frozenset({"cache", "model", "out", "eval_cache", "resume"})
# The RESUMABLE settings that ask a finished run for work after its steps: what final/ also
# writes, and where it is uploaded. A finished run resumed with any other changed has nothing to do.
AFTER_FINAL = frozenset({"merge_adapters", "push_to_hub", "hub_private"})


def config_record(cfg: TrainConfig) -> dict:
    """Every TrainConfig field as JSON (paths as strings), but --eval-only's two (a training run
    has them off: recorded, they would change every record and its checkpoints' settings digest).
    `fsdp` as the run took it: `accelerate launch --use_fsdp` shards a run without --fsdp."""
    from .sharding import requested

    record = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items() if k not in ("eval_only", "base_model")}
    return record | {"fsdp": requested(cfg)}


# Settings recorded since a version that trained without them, each with the value every run
# before it trained with: a record made then, and its checkpoints' settings digest, still match
# a resume that leaves the setting at that value.
RECORDED_SINCE = {"adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8}


# Derived entries that say what a setting came to, for the reader: decided again from the
# settings a resume compares (steps_share_prefixes: prefix_sharing and --model's layers;
# reference_identity: the cache, by its fingerprint).
INFORMATIONAL = frozenset({"steps_share_prefixes", REFERENCE_IDENTITY, "versions"})  # versions: where a development build kept them (began_with)


def made_with() -> dict:
    """The record's MADE_WITH entries for this process (formats/runrecord.py): the versions of
    kto-offline, torch and transformers, as the launch check compares them, and the folder the
    command runs in. Never compared: a resume on another install is allowed (a cluster's image
    moves on), but its steps may differ from the uninterrupted run's in the last bits, so the
    resume says which changed (versions_note) and the record keeps the versions the run began
    with (keep_recorded); the folder is the resume's own, as the paths its config holds."""
    import os

    from kto.formats.launch_agreement import versions

    return {"versions": {name.removesuffix(" version"): value for name, value in versions().items()}, "cwd": os.getcwd()}


def began_with(saved: dict) -> dict[str, str] | None:
    """The versions a run record says its run began with, or None (none recorded, or not as kto writes them)."""
    versions = saved.get("versions", saved.get("derived", {}).get("versions"))  # a development build kept them in derived
    ok = isinstance(versions, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items())
    return versions if ok else None


# The precision a run computes in: --mixed-precision with `auto` resolved (setup.py
# mixed_precision_in_force; bf16 autocast on CUDA, none on CPU), in `derived` since kto recorded
# it. `auto` alone does not say what ran: begun on CPU and resumed on a GPU, the run would switch
# from fp32 to bf16 autocast. A resume compares what is in force, not the words (`auto` and the
# `no` it meant are the same run); a record made before it, by the words, as then.
IN_FORCE = "mixed_precision_in_force"

# The eval cache a resume may add, drop or change (evaluation changes no training number):
# its fingerprint, and the one the run began with, kept once it changed (EVAL_AT_START).
EVAL_DERIVED = frozenset({EVAL_FINGERPRINT, EVAL_AT_START})


def _resume_may_change(part: str, key: str) -> bool:
    """A record entry that a resume may change: a RESUMABLE setting, one of the PATHS, the eval
    cache's fingerprints, or an INFORMATIONAL derived entry."""
    return (part == "config" and (key in RESUMABLE or key in PATHS)) or (part == "derived" and (key in INFORMATIONAL or key in EVAL_DERIVED))


def record_differences(saved: dict, now: dict, default_targets: Callable[[], Sequence[str]] | None = None) -> list[str]:
    """'name (X there, Y now)' for each setting a resume may not change. `default_targets`: the
    LoRA targets that lora_target_modules None stands for (--model's linear layers), asked for
    only when one side is None and the other a list; without it the two differ."""
    out, in_force = [], _in_force(saved, now)
    for part in ("config", "derived"):
        a, b = _as_recorded_since(part, saved.get(part, {})), _as_recorded_since(part, now[part])
        for k in sorted(set(a) | set(b)):
            if _resume_may_change(part, k) or (k == "mixed_precision" and part == "config" and in_force is not None):
                continue  # (--mixed-precision: compared by what is in force, IN_FORCE, where both records say it)
            if k == IN_FORCE and part == "derived":
                if in_force is not None and in_force[0] != in_force[1]:
                    out.append(_precision_difference(saved.get("config", {}), now["config"], *in_force))
                continue
            if k == "model_identity" and k in a and k in b and same_model(a[k], b[k]):
                continue  # a record made before the identity gained a key still matches
            if k == "lora_target_modules" and part == "config" and same_targets(a.get(k), b.get(k), default_targets):
                continue
            if k == "model_identity" and a.get(k) != b.get(k):
                out.append(_model_difference(saved.get("config", {}), now["config"], a.get(k, "(absent)"), b.get(k, "(absent)")))
            elif a.get(k, "(absent)") != b.get(k, "(absent)"):
                out.append(f"{k} ({_show(a.get(k, '(absent)'))} there, {_show(b.get(k, '(absent)'))} now)")
    return out + _dropout_draws_differ(saved.get("config", {}), now)


def _in_force(saved: dict, now: dict) -> tuple[str, str] | None:
    """(there, now): the precision in force each record says (IN_FORCE); None where either
    lacks it (a record made before it: the words are compared instead)."""
    there, here = saved.get("derived", {}).get(IN_FORCE), now.get("derived", {}).get(IN_FORCE)
    return None if there is None or here is None else (there, here)


def _precision_difference(config_there: dict, config_now: dict, there: str, now: str) -> str:
    """Another precision in force, said with the words given where they differ from it (`auto
    meaning no there, auto meaning bf16 now`), and what `auto` means where one side said it."""
    words = (config_there.get("mixed_precision"), config_now.get("mixed_precision"))
    said = [str(in_force) if word == in_force else f"{word} meaning {in_force}" for word, in_force in zip(words, (there, now))]
    why = ": auto is bf16 autocast on CUDA, none on CPU" if "auto" in words else ""
    return f"mixed_precision ({said[0]} there, {said[1]} now{why})"


def _model_difference(config_there: dict, config_now: dict, there: object, now: object) -> str:
    """Another initial model, said by its flag and both paths as the others are (`lr (X there, Y
    now)`), with the identities that decide it (a moved model is the same one); where the path
    names the same place, its files changed since the run began: the hashes alone did not say which."""
    ids = f"{_show(there)} there, {_show(now)} now"
    path_there, path_now = config_there.get("model"), config_now.get("model")
    if path_there is not None and path_now is not None and _same_place(config_there, config_now):
        return f"--model {path_now} (the model at {path_now} changed since the run began: {ids})"
    return f"--model ({path_there} there, {path_now} now; {ids})"


def _same_place(config_there: dict, config_now: dict) -> bool:
    """Whether the recorded --model and this one name one folder. kto_run.json keeps paths as
    typed and no working directory, so a relative one recorded is read from here only where the
    run is resumed from where it began: its --out as recorded (relative too) names this --out from
    here. Otherwise where it was typed is not known (resumed from another directory, `m1` there
    may be another folder than `m1` here), and the two paths are said instead."""
    there, here = Path(config_there["model"]), Path(config_now["model"])
    try:
        if not there.is_absolute():
            out_there = config_there.get("out")
            if out_there is None or Path(out_there).is_absolute() or Path(out_there).resolve() != Path(config_now["out"]).resolve():
                return False
        return there.resolve() == here.resolve()
    except (OSError, RuntimeError, ValueError):  # a name no path resolves (a loop of links, a NUL)
        return False


def keep_recorded(record: dict, saved: dict) -> None:
    """After a resume found no difference: `record` takes the values the run recorded where the
    two may be written otherwise yet mean the same (record_differences' exceptions), so the
    record stays as the run wrote it and the settings digest, which hashes values as written,
    matches its checkpoints' own: the LoRA targets as spelt, the model identity of a run
    recorded before the identity gained a key (its sha256 of each weight file: otherwise every
    run started before that could not be resumed), --mixed-precision as given (`auto` where this
    resume says the `no` it meant), and no precision in force where the run recorded none."""
    keep_recorded_targets(record, saved)
    if IN_FORCE not in saved.get("derived", {}):
        record["derived"].pop(IN_FORCE, None)  # a record made before it stays so: its checkpoints' digest hashes none
    elif "mixed_precision" in saved.get("config", {}):
        record["config"]["mixed_precision"] = saved["config"]["mixed_precision"]  # `auto` there, the `no` it meant now
    there, now = saved.get("derived", {}).get("model_identity"), record.get("derived", {}).get("model_identity")
    if there is not None and now is not None and same_model(there, now):
        record["derived"]["model_identity"] = there
    if began_with(saved) is not None:
        record["versions"] = saved["versions"]
    start = eval_cache_at_start(saved.get("derived", {}))
    if EVAL_AT_START in saved.get("derived", {}) or start != record.get("derived", {}).get(EVAL_FINGERPRINT):
        record["derived"][EVAL_AT_START] = start


def _dropout_draws_differ(there: dict, record: dict) -> list[str]:
    """Gradient checkpointing is a memory knob a resume may change, except where dropout acts
    (--keep-dropout) on a prefix-shared policy pass: checkpointing runs that pass plain
    (setup.py), and a shared pass draws one dropout mask per prompt where a plain one draws one
    per row, so the numbers after the resume would be another run's."""
    key, now = "gradient_checkpointing", record["config"]
    shares = record.get("derived", {}).get("steps_share_prefixes", now.get("prefix_sharing", True))  # --model's layers may not pack
    if not now.get("keep_dropout") or not shares or bool(there.get(key)) == bool(now.get(key)):
        return []
    return [f"{key} ({_show(there.get(key))} there, {_show(now.get(key))} now: with --keep-dropout it changes the dropout masks drawn)"]


def settings_digest(record: dict) -> str:
    """A hash of the settings a resume may not change (those record_differences compares).
    Checkpoints carry it, so one copied in from another run (another β, say) is refused. It
    also hashes the eval cache the run began with: checkpoints written before a resume could
    change the eval cache hashed its fingerprint in, and must still resume."""
    kept = {part: {k: v for k, v in record.get(part, {}).items() if not _resume_may_change(part, k)} for part in ("config", "derived")}
    kept["config"] = {k: v for k, v in kept["config"].items() if not (k in RECORDED_SINCE and v == RECORDED_SINCE[k])}
    if EVAL_DERIVED & set(record.get("derived", {})):
        kept["derived"][EVAL_FINGERPRINT] = eval_cache_at_start(record["derived"])
    return fingerprint_of(kept)


def _as_recorded_since(part: str, settings: dict) -> dict:
    """`settings` with each RECORDED_SINCE key it lacks at the value runs before it trained with."""
    return {**RECORDED_SINCE, **settings} if part == "config" else settings


def _show(value) -> str:
    """A value for the one-line message; a model identity (a dict of hashes) by a short hash."""
    if isinstance(value, (dict, list)):
        return "identity " + fingerprint_of(value)[:12]
    return str(value)


# Where a run trained in fp16 autocast (CUDA only) cannot resume: said by the refused resume and
# by the refusal of --mixed-precision fp16 on CPU, so that neither sends the user to the other.
FP16_RESUMES_ON_CUDA = "it trained in fp16 autocast, which runs on CUDA only: resume it on a machine with CUDA (here, --mixed-precision bf16 or no make another run: another --out)"


def recorded_precision(saved: dict) -> str | None:
    """The precision the run in force trained with: IN_FORCE, or in a record made before it the
    --mixed-precision it was given, unless `auto` (which meant bf16 on CUDA, none on CPU: not known)."""
    there = saved.get("derived", {}).get(IN_FORCE)
    if there is None:
        word = saved.get("config", {}).get("mixed_precision")
        there = None if word in (None, "auto") else word
    return there


def precision_hint(differs: list[str], saved: dict) -> str:
    """The way out of a refused resume whose precision in force differs: the precision the run
    trained with (recorded_precision), given explicitly, or, for fp16 on a machine without
    CUDA, where it can resume."""
    there = recorded_precision(saved)
    if there is None or not any(d.startswith("mixed_precision (") for d in differs):
        return ""
    import torch

    if there == "fp16" and not torch.cuda.is_available():
        return f"; {FP16_RESUMES_ON_CUDA}"
    return f"; pass --mixed-precision {there} to resume in the precision the run trained with"


def resumable_changes(saved: dict, record: dict) -> list[str]:
    """'--flag X -> Y' for each RESUMABLE setting the resume changed, and the eval cache when it
    is another (by fingerprint: a moved eval cache is the same one)."""
    from .config import DEFAULTS

    there, now = saved["config"], record["config"]
    changed = [f"--{k.replace('_', '-')} {there.get(k)} -> {v}" for k, v in now.items() if k in RESUMABLE and k in there and there[k] != v]
    # A setting an earlier kto did not record (--save-each-epoch, --eval-each-epoch): that kto ran
    # without it, as the default does, so only a value off the default is a change.
    changed += [
        f"--{k.replace('_', '-')} (not recorded by an earlier kto) -> {v}" for k, v in now.items() if k in RESUMABLE and k not in there and v != DEFAULTS.get(k)
    ]
    if saved["derived"].get(EVAL_FINGERPRINT) != record["derived"].get(EVAL_FINGERPRINT):
        changed.append(f"--eval-cache {there.get('eval_cache')} -> {now.get('eval_cache')}")
    return changed


def versions_note(saved: dict, record: dict) -> str | None:
    """What a resume runs on (`record`'s versions, made_with's) that the run did not begin with
    (`saved`'s): 'torch 2.12.0 -> 2.13.0', or None."""
    began, running = began_with(saved) or {}, record["versions"]
    moved = [f"{name} {began[name]} -> {running[name]}" for name in running if name in began and began[name] != running[name]]
    if not moved:
        return None
    return f"--resume: {', '.join(moved)} since the run began; its steps from here may differ in the last bits from an uninterrupted run's"
