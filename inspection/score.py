"""kto-inspect score: run a policy over a cache's rows and give each row its implicit reward.

    reward = β · (log πθ(y|x) − log πref(y|x))

log πθ comes from `kto.formats.compute.scoring.score_sequences`, the same batching and log-prob
definition (`CompletionLogps`) that kto-precompute used for the cached log πref, so a policy
equal to the reference scores reward 0 up to rounding. The output is a Parquet file keyed by
`id`, joinable with `kto.formats.scan(cache)`; it is written atomically, never into the cache
directory (kto-precompute would take a foreign file there for someone else's data).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from kto.formats import schema as S
from kto.formats.atomic import NotWritableError, atomic_path, check_can_create, write_target
from kto.formats.cache import cache_holding, open_cache
from kto.formats.compute.adapters import base_model_of, is_adapter_dir, require_peft, with_adapters
from kto.formats.errors import InputError, log
from kto.formats.paths import arrow_path
from kto.formats.runrecord import run_holding

if TYPE_CHECKING:
    import torch

    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.numerics import Numerics
    from kto.formats.compute.sources import ModelSource
    from kto.formats.manifest import Manifest

DEFAULT_BETA = 0.1
SCORE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.bool_(), nullable=False),
        pa.field("policy_logp", pa.float64(), nullable=False),
        pa.field("ref_logp", pa.float64(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
    ]
)


def _check_flags(beta: float, batch_tokens: int | None, chunk_size: int, dtype: str, out: Path, cache_dir: Path) -> None:
    if not 0 < beta < math.inf:
        raise InputError(f"--beta {beta}: must be a finite positive number")
    for flag, value in (("--batch-tokens", batch_tokens), ("--chunk-size", chunk_size)):
        if value is not None and value <= 0:
            raise InputError(f"{flag} {value}: must be positive")
    from kto.formats.compute.numerics import NAMES

    if dtype not in NAMES:
        raise InputError(f"--dtype {dtype}: choose one of {', '.join(NAMES)}")
    try:
        target = write_target(out)  # first: a name past the filesystem's limit makes os.stat below raise ENAMETOOLONG
    except NotWritableError as exc:
        raise InputError(f"--out {exc}") from None
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory; name the .parquet file to write")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist")
    holder = cache_dir if cache_dir.resolve() in out.resolve().parents else cache_holding(out)
    if holder is not None:
        raise InputError(f"--out {out}: inside the cache directory {holder}; write it elsewhere (a cache holds only kto files)")
    run = run_holding(out)
    if run is not None:
        raise InputError(f"--out {out}: inside the kto-train run {run}, which holds only its own files (its --resume refuses others); write it elsewhere")
    if out.exists() and not _is_score_file(out):
        raise InputError(f"--out {out}: exists and is not a file kto-inspect score wrote; name a new file (it replaces only its own)")
    try:
        check_can_create(target)  # a read-only mount otherwise fails only at the write, after all the scoring
    except NotWritableError as exc:
        raise InputError(f"--out {exc}") from None


def _is_score_file(path: Path) -> bool:
    """A Parquet file with score's metadata: the one kind of existing --out that may be replaced."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(arrow_path(path)).metadata or {}
    except (OSError, pa.ArrowException):
        return False
    return b"kto.cache_fingerprint" in meta and b"kto.beta" in meta


def run_beta(model: str) -> tuple[float | None, Path | None]:
    """β of the kto-train run whose final/, final-merged/ or checkpoint-STEP/ is `model` (from RUN/kto_run.json)."""
    from kto.formats.runrecord import run_setting

    beta, record = run_setting(model, "beta")
    if record is None:
        return None, None
    if not isinstance(beta, (int, float)) or isinstance(beta, bool):
        raise InputError(f"{record}: no numeric beta; pass --beta")
    return float(beta), record


def score_cache(
    cache_dir: str | Path,
    model: str,
    out: str | Path,
    *,
    beta: float | None = None,
    batch_tokens: int | None = None,
    dtype: str = "auto",
    chunk_size: int = 1024,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    base_model: str | None = None,
    log: Callable[[str], None] = log,
) -> dict:
    """Score every row of the cache with `model`; write `out`; return the per-label summary.

    beta None: the run's β when `model` is a kto-train run's final/ or checkpoint-STEP/ (read
    from its RUN/kto_run.json), else DEFAULT_BETA. batch_tokens None: kto-precompute's default
    for the device (16384 on a GPU, 2048 on CPU)."""
    import pyarrow.parquet as pq

    from kto.formats.compute.logprob import check_cache_positions
    from kto.formats.compute.scoring import default_batch_tokens

    cache_dir, out = Path(cache_dir), Path(out)
    beta = _beta_for(beta, model, log)
    if not cache_dir.is_dir():
        raise InputError(f"{cache_dir}: no such cache directory")
    _check_flags(beta, batch_tokens, chunk_size, dtype, out, cache_dir)
    cache = open_cache(cache_dir)
    manifest = cache.manifest
    scorer = _Scorer.load(model, base_model, manifest, dtype, attn_implementation, trust_remote_code, chunk_size, log)
    check_cache_positions(cache, scorer.completion_logps.lm, f"--model {model}", "CACHE")  # one line, not an IndexError mid-shard
    batch_tokens = batch_tokens or default_batch_tokens(scorer.device)
    parts = []
    for k, entry in enumerate(manifest.shards):
        table = cache.read_shard(k)  # sha256, schema, row count and values; one shard at a time
        parts.append(scorer.score_shard(table, batch_tokens, beta))
        log(f"scored {entry.name} ({k + 1}/{len(manifest.shards)}, {table.num_rows} rows)")
    result = pa.concat_tables(parts) if parts else SCORE_SCHEMA.empty_table()
    meta = {"kto.cache_fingerprint": manifest.fingerprint, "kto.beta": repr(beta), "kto.model": str(model), "kto.dtype": scorer.numerics.name}
    with atomic_path(write_target(out)) as tmp:  # a link the user named: its target is replaced
        pq.write_table(result.replace_schema_metadata(meta), arrow_path(tmp))
    return {"out": str(out), "model": str(model), "beta": beta, **summarize_scores(result)}


def _beta_for(beta: float | None, model: str, log: Callable[[str], None]) -> float:
    """--beta, else the run's β (said on stderr), else DEFAULT_BETA."""
    if beta is not None:
        return beta
    beta, record = run_beta(model)
    if beta is None:
        return DEFAULT_BETA
    log(f"β = {beta:g}, the run's, from {record}")
    return beta


@dataclass(frozen=True)
class _Scorer:
    """The policy as kto-train computes its log-probs, with its tokenizer and numerics."""

    completion_logps: CompletionLogps
    pad_id: int
    numerics: Numerics
    device: torch.device

    @classmethod
    def load(
        cls,
        model: str,
        base_model: str | None,
        manifest: Manifest,
        dtype: str,
        attn_implementation: str,
        trust_remote_code: bool,
        chunk_size: int,
        log: Callable[[str], None],
    ) -> _Scorer:
        import torch

        from kto.formats.compute.identity import model_identity
        from kto.formats.compute.loading import load_completion_logps, load_tokenizer
        from kto.formats.compute.numerics import parse_numerics
        from kto.formats.compute.tokenizer_check import require_cache_tokenizer

        policy = _policy(model, base_model)
        tokenizer = load_tokenizer(policy.tokenizer, trust_remote_code=trust_remote_code)
        require_cache_tokenizer(tokenizer, manifest.content.tokenizer, model)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        numerics = parse_numerics(dtype, device)  # `auto` resolves as kto-precompute's does
        ref_numerics = manifest.content.dtype
        if ref_numerics != numerics.name:
            log(
                f"note: the cached reference log-probs were computed in {ref_numerics}; scoring in "
                f"{numerics.name} adds rounding noise to every reward (--dtype {ref_numerics} matches them)"
            )
        if policy.adjust is None and manifest.content.scored_with(model_identity(policy.source)):
            log("note: --model is the cache's reference model; every reward should be about 0")
        # Not merged: the adapters are applied as kto-train applied them, so the numbers match its.
        completion_logps = load_completion_logps(
            policy.source,
            dtype=numerics.weights,
            device=device,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            chunk_size=chunk_size,
            adjust=policy.adjust,
        )
        if policy.note:
            log(policy.note)
        return cls(completion_logps, tokenizer.pad_token_id, numerics, device)

    def score_shard(self, table: pa.Table, batch_tokens: int, beta: float) -> pa.Table:
        """One shard's rows: id, label, the policy's and the reference's log-probs, the reward."""
        from kto.formats.compute.scoring import score_sequences

        ids = table.column(S.ID).to_pylist()
        with self.numerics.context(self.device.type):
            scored = score_sequences(
                self.completion_logps,
                table.column(S.PROMPT_IDS).to_pylist(),
                table.column(S.COMPLETION_IDS).to_pylist(),
                ids,
                batch_tokens=batch_tokens,
                pad_id=self.pad_id,
                device=self.device,
            )
        ref = table.column(S.REF_LOGP).to_numpy()
        columns = {"id": table.column(S.ID), "label": table.column(S.LABEL), "policy_logp": scored.sums, "ref_logp": ref, "reward": beta * (scored.sums - ref)}
        return pa.table(columns, schema=SCORE_SCHEMA)


@dataclass(frozen=True)
class _Policy:
    """How to load `--model`: `source` first (the model itself, or the base a run's weights go
    on), then `adjust` (None: `source` is the policy), with the tokenizer of `tokenizer`."""

    source: ModelSource
    tokenizer: ModelSource
    adjust: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    note: str | None = None


def _policy(model: str, base_model: str | None) -> _Policy:
    """A model directory or hub id; a PEFT adapter directory (a LoRA run's final/ or checkpoint,
    sharded or not) on its base; or a full fine-tune's FSDP checkpoint (no config.json: the
    weights in DCP shards) loaded onto its run's --model. A kto-train checkpoint or final/
    holds the run's tokenizer."""
    from kto.formats.compute.sharded import is_sharded_checkpoint, load_sharded_weights
    from kto.formats.compute.sources import ModelSource, resolve_source

    path = Path(model).resolve()
    if is_adapter_dir(Path(model)):
        require_peft("--model")
        flag = "--base-model" if base_model else f"--model {model}: the base its adapter_config.json names,"
        base = _base_of(path, base_model)
        source = resolve_source(base, flag=flag)
        _require_runs_model(path, source, f"{flag} {base}", "trained its adapters on", base_model)
        kind = "the LoRA adapters" + (" (sharded by FSDP)" if is_sharded_checkpoint(path) else "")
        # kto-train's adapter folders hold the run's tokenizer; peft's own save holds none: the base's then
        tokenizer = ModelSource(path) if _holds_tokenizer(path) else source
        return _Policy(source, tokenizer, lambda lm: with_adapters(lm, path), f"note: scoring {source.directory} with {kind} of {path}")
    if is_sharded_checkpoint(Path(model)) and not (path / "config.json").is_file():
        flag = "--base-model" if base_model else f"--model {model}: its run's --model,"
        base = _base_of_run(model, base_model)
        source = resolve_source(base, flag=flag)
        _require_runs_model(path, source, f"{flag} {base}", "trained", base_model)
        note = f"note: scoring the weights of {path} (sharded by FSDP) on the model of {source.directory}"
        return _Policy(source, ModelSource(path), lambda lm: load_sharded_weights(lm, path), note)
    source = resolve_source(model)
    if base_model:  # would go unused: the scores would be --model's while the user meant another base's
        raise InputError(f"--base-model is for LoRA adapters or an FSDP checkpoint; --model {model} is a whole model")
    return _Policy(source, source)


def _require_runs_model(folder: Path, source: ModelSource, said: str, trained: str, base_model: str | None) -> None:
    """Refuse a base other than the one the run of `folder` (its final/ or checkpoint-STEP/)
    trained on: its record's derived.model_identity, compared as kto-train's --resume compares it.
    The weights would load onto any model of the same shapes, and score wrong without a word. A
    folder of no run, or a record without the identity, names no model: the caller's note says
    which base is used."""
    from kto.formats.compute.identity import model_identity
    from kto.formats.manifest import same_model
    from kto.formats.runrecord import read_run_config, record_path, run_of_model_dir

    run = run_of_model_dir(folder)
    if run is None:
        return
    record = read_run_config(run)
    trained_on = record["derived"].get("model_identity")
    if not isinstance(trained_on, dict) or _same_weights(model_identity(source), trained_on, same_model):
        return
    give = "give that model" if base_model else "give that model as --base-model"
    raise InputError(f"{said}: not the model the run {run} {trained} (its record {record_path(run)} names {record['config'].get('model')}); {give}")


def _same_weights(a: dict, b: dict, same_model: Callable[[dict, dict], bool]) -> bool:
    """Two identities of the same config and weights, however the model was reached: the hub
    revision (a hub id on one side, a local copy of its files on the other, or a new commit that
    left the weights alone) and the weight files' names (a renamed .gguf) do not decide it."""
    a, b = ({k: v for k, v in i.items() if k != "hub_revision"} for i in (a, b))
    if same_model(a, b):
        return True
    wa, wb = a.get("weights"), b.get("weights")
    if a.get("config") != b.get("config") or not isinstance(wa, dict) or not isinstance(wb, dict) or len(wa) != len(wb):
        return False
    contents = lambda w: sorted(json.dumps(v, sort_keys=True) for v in w.values())
    return contents(wa) == contents(wb)


def _holds_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"))


def _base_of(adapter_dir: Path, base_model: str | None) -> str:
    """--base-model, else the base recorded by peft in adapter_config.json, made exact by the
    run's record where that base is a GGUF file's folder (peft names the folder; the file is
    passed as gguf_file=): the folder alone would load the first of several .gguf files, or a
    safetensors model beside the file (llama.cpp's converter writes it there), and score on it."""
    from kto.formats.runrecord import run_setting

    base = base_model or base_model_of(adapter_dir)
    if not base:
        raise InputError(f"--model {adapter_dir}: an adapter directory that names no base model; pass --base-model")
    if base_model is None:
        trained_on, _ = run_setting(adapter_dir, "model")
        if isinstance(trained_on, str) and trained_on.endswith(".gguf") and _same_dir(Path(trained_on).expanduser().parent, Path(base).expanduser()):
            return trained_on
    return base


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _base_of_run(checkpoint: str, base_model: str | None) -> str:
    """--base-model, else the --model of the run that saved FSDP checkpoint `checkpoint` (its
    architecture and config: the checkpoint holds every weight, and no config.json)."""
    from kto.formats.compute.sharded import SHARDED_DIR
    from kto.formats.runrecord import run_setting

    if base_model:
        return base_model
    base, _ = run_setting(checkpoint, "model")
    if not isinstance(base, str) or not base:
        raise InputError(
            f"--model {checkpoint}: an FSDP checkpoint (its weights are sharded in {SHARDED_DIR}/*.distcp) with no run record "
            "(RUN/kto_run.json) naming the model it trained; pass that model as --base-model"
        )
    return base


def summarize_scores(table: pa.Table) -> dict:
    """Per label: rows, how many moved the expected way, and the mean reward.

    Desirable rows should gain log-prob under the policy (reward > 0), undesirable ones lose it."""
    label = table.column("label").to_numpy(zero_copy_only=False).astype(bool)
    reward = table.column("reward").to_numpy()
    delta = table.column("policy_logp").to_numpy() - table.column("ref_logp").to_numpy()
    d, u = delta[label], delta[~label]
    mean = lambda x: float(np.mean(x)) if len(x) else None
    return {
        "rows": int(table.num_rows),
        "desirable": {"rows": int(len(d)), "gained": int(np.sum(d > 0)), "mean_reward": mean(reward[label])},
        "undesirable": {"rows": int(len(u)), "lost": int(np.sum(u < 0)), "mean_reward": mean(reward[~label])},
    }


def render(result: dict) -> str:
    d, u = result["desirable"], result["undesirable"]
    pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "-"
    fmt = lambda v: "-" if v is None else f"{v:+.4g}"
    return "\n".join(
        [
            f"scored {result['rows']} rows with {result['model']} (β = {result['beta']:g})",
            f"desirable:   {d['gained']} of {d['rows']} gained log-prob ({pct(d['gained'], d['rows'])}), mean reward {fmt(d['mean_reward'])}",
            f"undesirable: {u['lost']} of {u['rows']} lost log-prob ({pct(u['lost'], u['rows'])}), mean reward {fmt(u['mean_reward'])}",
            f"wrote {result['out']} (columns id, label, policy_logp, ref_logp, reward; join on id with kto.formats.scan)",
        ]
    )
