"""`kto-inspect export CHECKPOINT OUT`: a kto-train checkpoint as a folder other tools load.

An FSDP run's RUN/checkpoint-STEP/ holds its weights as torch.distributed.checkpoint shards
(sharded/*.distcp, keys "lm.<HF key>" beside the optimizer's), which transformers, peft and
`accelerate merge-weights` cannot read, nor kto-train's and kto-precompute's --model. This writes
OUT as a run without --fsdp saves final/ (without its model card): an HF model directory of a
full fine-tune, or the PEFT adapter folder of a LoRA run; with --merge, the adapters merged into
their base (what --merge-adapters writes as final-merged/). `--merge` also takes a LoRA folder
that is not sharded (a run's final/ or checkpoint-STEP/, any PEFT adapter folder).

The weights are read as `kto-train --eval-only` and `kto-inspect score` read them
(formats/compute/policy_dirs.py policy_to_load: the run's --model, or the adapters' base, then
the checkpoint's shards onto it), in the run's --dtype, the dtype its final/ holds; then written
by the writer of final/ (policy_dirs.save_model_dir) into a temp folder renamed to OUT. OUT must
not exist, and must lie in an existing folder outside CHECKPOINT, a cache and a run directory.
The temp folders of OUT that killed exports left are removed first (no lock guards OUT: only
those whose process is gone).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from kto.formats.errors import InputError


def export_checkpoint(checkpoint: Path, out: Path, merge: bool, base_model: str | None, trust_remote_code: bool, log: Callable[[str], None]) -> dict:
    """Write OUT from `checkpoint` (see the module docstring); return what was written."""
    from kto.formats.atomic import atomic_dir
    from kto.formats.compute.library_bars import library_bars_off
    from kto.formats.compute.loading import load_completion_logps, load_tokenizer, tokenizer_as_given
    from kto.formats.compute.numerics import torch_dtype
    from kto.formats.compute.policy_dirs import policy_to_load, save_model_dir
    from kto.formats.files import uniform_permissions

    adapters = _checked(checkpoint, out, merge, base_model)
    dtype, said = _dtype(checkpoint)
    policy = policy_to_load(str(checkpoint), base_model, flag="CHECKPOINT")
    for name in _remove_killed_temps(out):
        log(f"{out.parent}: removed {name} (left by a killed export)")
    log(f"loading {policy.what} ({dtype}, {said})")
    lm = load_completion_logps(policy.source, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, adjust=policy.adjust).lm
    if merge:
        lm = lm.merge_and_unload()
    tokenizer = tokenizer_as_given(load_tokenizer(policy.tokenizer, trust_remote_code=trust_remote_code))
    with atomic_dir(out) as tmp, library_bars_off():
        save_model_dir(lm, tokenizer, tmp)
        if adapters and not merge:  # peft's placeholder card ("# Model Card for Model ID", the base as an absolute path): the run's card is final/'s
            (tmp / "README.md").unlink(missing_ok=True)
        uniform_permissions(tmp)  # model.safetensors is written 0600 by transformers, as final/ gets it
    what = (
        "LoRA adapters merged into their base (a model directory)" if merge else ("LoRA adapters (a PEFT adapter folder)" if adapters else "a model directory")
    )
    return {"checkpoint": str(checkpoint), "out": str(out), "holds": what, "dtype": dtype, "base": str(policy.source.name)}


def _checked(checkpoint: Path, out: Path, merge: bool, base_model: str | None) -> bool:
    """Refuse what cannot be exported, or where, before anything loads; True for LoRA adapters."""
    from kto.formats.compute.adapters import is_adapter_dir
    from kto.formats.compute.sharded import SHARDED_DIR, is_sharded_checkpoint

    if not checkpoint.is_dir():
        raise InputError(f"CHECKPOINT {checkpoint}: no such directory")
    adapters, sharded = is_adapter_dir(checkpoint), is_sharded_checkpoint(checkpoint)
    if merge and not adapters:
        raise InputError(f"--merge: {checkpoint} holds no LoRA adapters (adapter_config.json); there is nothing to merge")
    if not sharded and not merge:
        kind = "a PEFT adapter folder already (--merge writes it merged into its base)" if adapters else "not an FSDP checkpoint"
        raise InputError(f"CHECKPOINT {checkpoint}: {kind}; export reads a kto-train FSDP checkpoint's {SHARDED_DIR}/*.distcp")
    if base_model and not (adapters or sharded):
        raise InputError(f"--base-model: {checkpoint} names its model itself")
    _check_out(out, checkpoint)
    return adapters


def _check_out(out: Path, checkpoint: Path) -> None:
    """OUT: a new folder in an existing one, outside CHECKPOINT (its run's --resume and the
    checksums of its files would meet a stranger there), a cache and a run; writable."""
    from kto.formats.atomic import NotWritableError, check_can_create
    from kto.formats.cache import refuse_inside_others
    from kto.formats.files import output_dir

    if out.exists() or out.is_symlink():
        raise InputError(f"OUT {out}: already exists; export writes a new folder, give a path that does not exist")
    output_dir(out, f"OUT {out}")  # a file, or a link to nothing, above OUT
    if not out.parent.is_dir():
        raise InputError(f"OUT {out}: directory {out.parent} does not exist")
    if checkpoint.resolve() in out.resolve().parents:
        raise InputError(f"OUT {out}: inside CHECKPOINT {checkpoint}, which holds only the checkpoint's files; choose a directory outside it")
    try:
        refuse_inside_others(out)
    except InputError as exc:
        raise InputError(str(exc).replace("--out ", "OUT ", 1)) from None
    try:
        check_can_create(out)
    except NotWritableError as exc:
        raise InputError(f"OUT {exc}") from None


def _remove_killed_temps(out: Path) -> list[str]:
    """The names of OUT's temp folders (atomic_dir's `.OUT.tmp-PID-THREAD`, as big as the model)
    whose process no longer runs, removed: an export killed mid-write leaves one, and nothing
    else removes it (no lock guards OUT, so a live process's temp folder is left to it)."""
    from kto.formats.atomic import parse_temp_name, temp_stem
    from kto.formats.lock import running_here

    stem, removed = temp_stem(out.name, out.parent), []
    for path in sorted(out.parent.iterdir()):
        parsed, pid = parse_temp_name(path.name), path.name.rpartition(".tmp-")[2].split("-")[0]
        if parsed != (stem, "tmp") or path.is_symlink() or running_here(pid):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            removed.append(path.name)
    return removed


def _dtype(checkpoint: Path) -> tuple[str, str]:
    """The dtype final/ of the checkpoint's run holds: its --dtype (kto-train's default, fp32,
    for a checkpoint outside its run), and where that came from."""
    from kto.formats.compute.numerics import WEIGHT_DTYPES
    from kto.formats.runrecord import run_setting

    dtype, record = run_setting(checkpoint, "dtype")
    if record is None:
        return "fp32", "kto-train's default --dtype: no run record beside the checkpoint"
    if dtype is None:
        return "fp32", f"kto-train's default --dtype: {record} names none"
    if dtype not in WEIGHT_DTYPES:
        said = f"has config.dtype {dtype!r}, not one of {', '.join(WEIGHT_DTYPES)}"
        raise InputError(f"CHECKPOINT {checkpoint}: its run's record {record} {said}; give a checkpoint of an unedited run")
    return dtype, f"the run's --dtype, from {record}"
