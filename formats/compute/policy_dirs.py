"""What a `--model` naming a policy loads as: a model directory or hub id, a PEFT adapter
directory (a LoRA run's final/ or checkpoint-STEP/, sharded by FSDP or not) on its base, or a
full fine-tune's FSDP checkpoint (no config.json: the weights in DCP shards) on its run's model.

kto-inspect score and kto-train --eval-only both load a policy this way, so a trained run's
final/ or checkpoint is read one way whichever command scores it. Messages name `--model` and
`--base-model`, the flags of both commands. `RunOf`, the run such a folder lies in, is here for
both too: each checks the cache it is given against the run's reference with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kto.formats.compute.adapters import base_model_of, is_adapter_dir, require_peft, with_adapters
from kto.formats.errors import InputError
from kto.formats.files import same_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from kto.formats.compute.sources import ModelSource
    from kto.formats.manifest import Manifest


@dataclass(frozen=True)
class PolicyToLoad:
    """How to load `--model`: `source` first (the model itself, or the base a run's weights go
    on), then `adjust` (None: `source` is the policy), with the tokenizer of `tokenizer`."""

    source: ModelSource
    tokenizer: ModelSource
    adjust: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    what: str | None = None
    """What is loaded, where `adjust` is set, for the caller's note: `scoring {what}`."""


def policy_to_load(model: str, base_model: str | None, flag: str = "--model") -> PolicyToLoad:
    """A model directory or hub id; a PEFT adapter directory (a LoRA run's final/ or checkpoint,
    sharded or not) on its base; or a full fine-tune's FSDP checkpoint (no config.json: the
    weights in DCP shards) loaded onto its run's --model. A kto-train checkpoint or final/
    holds the run's tokenizer. `flag`: how the caller's command takes `model`, for its messages
    (kto-inspect export: its argument CHECKPOINT)."""
    from kto.formats.compute.sharded import is_sharded_checkpoint, load_sharded_weights
    from kto.formats.compute.sources import ModelSource, resolve_source
    from kto.formats.runrecord import refuse_run_dir_as_model

    given = Path(model).expanduser()  # `~` is the home folder in every flag and config value (formats/paths.py)
    path = given.resolve()
    if is_adapter_dir(given):
        require_peft(flag)
        said = "--base-model" if base_model else f"{flag} {model}: the base its adapter_config.json names,"
        base = base_of(path, base_model, flag)
        source = named_base(base, said, base_model, "the model the adapters were trained on")
        require_runs_model(path, source, f"{said} {base}", "trained its adapters on", base_model)
        kind = "the LoRA adapters" + (" (sharded by FSDP)" if is_sharded_checkpoint(path) else "")
        # kto-train's adapter folders hold the run's tokenizer; peft's own save holds none: the base's then
        tokenizer = ModelSource(path) if holds_tokenizer(path) else source
        return PolicyToLoad(source, tokenizer, lambda lm: with_adapters(lm, path), f"{source.directory} with {kind} of {path}")
    if is_sharded_checkpoint(given) and not (path / "config.json").is_file():
        said = "--base-model" if base_model else f"{flag} {model}: its run's --model,"
        base = base_of_run(model, base_model, flag)
        source = named_base(base, said, base_model, "the model the run trained")
        require_runs_model(path, source, f"{said} {base}", "trained", base_model)
        what = f"the weights of {path} (sharded by FSDP) on the model of {source.directory}"
        return PolicyToLoad(source, ModelSource(path), lambda lm: load_sharded_weights(lm, path, flag), what)
    if given.is_dir():  # a LoRA run's folder: its final/ loads here, say so rather than "merge"
        refuse_run_dir_as_model(given, model, flag, adapters_ok=True)
    source = resolve_source(model, flag)
    if base_model:  # would go unused: the scores would be --model's while the user meant another base's
        raise InputError(f"--base-model is for LoRA adapters or an FSDP checkpoint; {flag} {model} is a whole model")
    return PolicyToLoad(source, source)


@dataclass(frozen=True)
class RunOf:
    """The kto-train run whose final/, final-merged/ or checkpoint-STEP/ --model is, if any: its
    directory and record (RUN/kto_run.json). kto-train --eval-only and kto-inspect score read it
    to check the caches they are given against the run's."""

    directory: Path | None
    record: dict

    @classmethod
    def model(cls, model: str | None) -> RunOf:
        from kto.formats.runrecord import read_run_config, run_of_model_dir

        run = run_of_model_dir(str(model))
        return cls(run, read_run_config(run) if run is not None else {})

    @property
    def derived(self) -> dict:
        return self.record.get("derived", {})

    def require_its_cache(self, fingerprint: str, said: str) -> None:
        """Refuse a --cache other than the one the run trained on (a rebuilt one included)."""
        recorded = self.derived.get("cache_fingerprint")
        if isinstance(recorded, str) and fingerprint != recorded:
            raise InputError(
                f"{said}: not the cache the run {self.directory} trained on (fingerprint {fingerprint[:16]}…, its record "
                f"names {recorded[:16]}…); give that cache as --cache, or leave --cache out"
            )

    def require_its_reference(self, scored_by: dict, said: str, remedy: str) -> None:
        """Refuse a cache scored by another model than the run's reference, when the run's own
        cache is not at hand to tell. The record names that reference (derived.reference_identity,
        its cache's model); a record made before it did names only the model the run started from,
        which is the reference unless the run trained another model. `remedy`: the caller's way
        out (kto-train --eval-only: give the run's cache as --cache)."""
        from kto.formats.runrecord import REFERENCE_IDENTITY

        reference = self.derived.get(REFERENCE_IDENTITY)
        if isinstance(reference, dict):
            if not same_weights(scored_by, reference):
                raise InputError(
                    f"{said}: scored by another model than the reference of the run {self.directory} (the model its --cache "
                    f"{self.record['config'].get('cache')} was made with): its rewards would be measured against another reference; {remedy}"
                )
            return
        started = self.derived.get("model_identity")
        if not isinstance(started, dict) or same_weights(scored_by, started):
            return
        raise InputError(
            f"{said}: scored by another model than the run {self.directory} started from ({self.record['config'].get('model')}), "
            f"and the run's --cache ({self.record['config'].get('cache')}) is not at hand to check it against: its rewards "
            f"would be measured against another reference; {remedy}"
        )

    def require_the_runs_reference(self, manifest: Manifest, said: str, remedy: str) -> None:
        """Refuse a cache (its `manifest`) that another reference model than the run's scored, as
        kto-train checks an eval cache (train/eval_only.py checked_eval_cache): against the run's
        --cache where its recorded path still holds it (the reference is that cache's model);
        else the run's own caches pass, by their recorded fingerprints, and another only if the
        run's reference scored it (require_its_reference). A model in no run (no record) passes."""
        from kto.formats.manifest import same_model
        from kto.formats.runrecord import EVAL_FINGERPRINT, eval_cache_at_start

        if self.directory is None:
            return
        trained = self._training_cache()
        if trained is not None:
            recorded, theirs = trained
            if same_model(manifest.content.model, theirs.content.model):
                return
            a, b = manifest.reference_model, theirs.reference_model
            same = ", the same path: the files there changed between the two" if a == b else ""
            raise InputError(
                f"{said}: made with another model ({a}) than the run {self.directory}'s --cache {recorded} ({b}{same}); "
                "its rewards would be measured against another reference"
            )
        if manifest.fingerprint not in (self.derived.get("cache_fingerprint"), self.derived.get(EVAL_FINGERPRINT), eval_cache_at_start(self.derived)):
            self.require_its_reference(manifest.content.model, said, remedy)

    def training_cache(self) -> Path | None:
        """The run's --cache, where its recorded path still holds the cache it trained on."""
        trained = self._training_cache()
        return None if trained is None else trained[0]

    def _training_cache(self) -> tuple[Path, Manifest] | None:
        """(the run's recorded --cache, its manifest) where that path still holds the cache the run
        trained on (its recorded fingerprint)."""
        from kto.formats.cache import open_cache

        recorded = self.record.get("config", {}).get("cache")
        if not isinstance(recorded, str) or not (Path(recorded) / "manifest.json").is_file():
            return None
        try:
            manifest = open_cache(Path(recorded), hold=False).manifest
        except InputError:
            return None
        return (Path(recorded), manifest) if manifest.fingerprint == self.derived.get("cache_fingerprint") else None


def named_base(base: str, said: str, base_model: str | None, what: str) -> ModelSource:
    """The base the weights go on: --base-model, else the one `said` names (adapter_config.json's,
    the run record's). Where that one is not there at all (a relative path read from another
    folder than the run's, a hub id offline), the refusal names the way out: `what` as --base-model."""
    from kto.formats.compute.sources import resolve_source

    try:
        return resolve_source(base, flag=said)
    except InputError as exc:
        if base_model or os.path.lexists(os.path.expanduser(base)):
            raise
        raise InputError(f"{exc}; give {what} as --base-model") from None


def policy_tokenizer(policy: PolicyToLoad, cache_tokenizer: dict, model: str, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """The policy's tokenizer, refused (one line naming --model) unless it tokenizes as the
    cache's did (`cache_tokenizer`: the manifest's content.tokenizer)."""
    from kto.formats.compute.loading import load_tokenizer
    from kto.formats.compute.tokenizer_check import require_cache_tokenizer

    tokenizer = load_tokenizer(policy.tokenizer, trust_remote_code=trust_remote_code)
    require_cache_tokenizer(tokenizer, cache_tokenizer, model)
    return tokenizer


def require_runs_model(folder: Path, source: ModelSource, said: str, trained: str, base_model: str | None) -> None:
    """Refuse a base other than the one the run of `folder` (its final/ or checkpoint-STEP/)
    trained on: its record's derived.model_identity, compared as kto-train's --resume compares it.
    The weights would load onto any model of the same shapes, and score wrong without a word. A
    folder of no run, or a record without the identity, names no model: the caller's note says
    which base is used."""
    from kto.formats.compute.identity import model_identity
    from kto.formats.runrecord import read_run_config, record_path, run_of_model_dir

    run = run_of_model_dir(folder)
    if run is None:
        return
    record = read_run_config(run)
    trained_on = record["derived"].get("model_identity")
    if not isinstance(trained_on, dict) or same_weights(model_identity(source), trained_on):
        return
    give = "give that model" if base_model else "give that model as --base-model"
    raise InputError(f"{said}: not the model the run {run} {trained} (its record {record_path(run)} names {record['config'].get('model')}); {give}")


def same_weights(a: dict, b: dict) -> bool:
    """Two identities of the same config and weights, however the model was reached: the hub
    revision (a hub id on one side, a local copy of its files on the other, or a new commit that
    left the weights alone) and the weight files' names (a renamed .gguf) do not decide it."""
    from kto.formats.manifest import same_model

    a, b = ({k: v for k, v in i.items() if k != "hub_revision"} for i in (a, b))
    if same_model(a, b):
        return True
    wa, wb = a.get("weights"), b.get("weights")
    if a.get("config") != b.get("config") or not isinstance(wa, dict) or not isinstance(wb, dict) or len(wa) != len(wb):
        return False
    contents = lambda w: sorted(json.dumps(v, sort_keys=True) for v in w.values())
    return contents(wa) == contents(wb)


def holds_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"))


def base_of(adapter_dir: Path, base_model: str | None, flag: str = "--model") -> str:
    """--base-model, else the base recorded by peft in adapter_config.json, made exact by the
    run's record where that base is a GGUF file's folder (peft names the folder; the file is
    passed as gguf_file=): the folder alone would load the first of several .gguf files, or a
    safetensors model beside the file (llama.cpp's converter writes it there), and score on it."""
    from kto.formats.runrecord import run_setting

    base = base_model or base_model_of(adapter_dir)
    if not base:
        raise InputError(f"{flag} {adapter_dir}: an adapter directory that names no base model; pass --base-model")
    if base_model is None:
        trained_on, _ = run_setting(adapter_dir, "model")
        if isinstance(trained_on, str) and trained_on.endswith(".gguf") and same_dir(Path(trained_on).expanduser().parent, Path(base).expanduser()):
            return trained_on
    return base


def base_of_run(checkpoint: str, base_model: str | None, flag: str = "--model") -> str:
    """--base-model, else the --model of the run that saved FSDP checkpoint `checkpoint` (its
    architecture and config: the checkpoint holds every weight, and no config.json). A relative
    path there is relative to the folder the run started in, which its record does not keep:
    from elsewhere it names nothing, or another model, and the refusal says so."""
    from kto.formats.compute.sharded import SHARDED_DIR
    from kto.formats.compute.sources import hub_id_shaped
    from kto.formats.runrecord import run_setting

    if base_model:
        return base_model
    base, record = run_setting(Path(checkpoint).expanduser(), "model")
    if not isinstance(base, str) or not base:
        raise InputError(
            f"{flag} {checkpoint}: an FSDP checkpoint (its weights are sharded in {SHARDED_DIR}/*.distcp) with no run record "
            "(RUN/kto_run.json) naming the model it trained; pass that model as --base-model"
        )
    path = Path(base).expanduser()
    if not path.is_absolute() and not path.exists() and not hub_id_shaped(base):
        raise InputError(
            f"{flag} {checkpoint}: its run's --model, {base}, as {record} records it, is a path relative to the folder that run started in "
            f"(the record does not say which), and there is no {base} here; run this from that folder, or pass that model as --base-model"
        )
    return base


def save_model_dir(lm: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """The model folder kto-train writes (final/ and a checkpoint's model, without FSDP) and
    `kto-inspect export` writes from an FSDP checkpoint: `lm`'s save_pretrained (safetensors; a
    tied head stored once; a PeftModel writes its adapters and adapter_config.json) and the
    tokenizer's files, its chat template included. Here, in formats/, so that both write it alike."""
    lm.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
