"""kto-inspect score: run a policy over a cache's rows and give each row its implicit reward.

    reward = β · (log πθ(y|x) − log πref(y|x))

log πθ comes from `kto.formats.compute.scoring.score_sequences`, the same batching and log-prob
definition (`CompletionLogps`) that kto-precompute used for the cached log πref, so a policy
equal to the reference scores reward 0 up to rounding. The output is a Parquet file keyed by
`id`, joinable with `kto.formats.scan(cache)`; it is written atomically, never into the cache
directory (kto-precompute would take a foreign file there for someone else's data), and always
as Parquet (a name of another format is refused). A policy in a kto-train run is scored only on
a cache of the run's reference, checked as kto-train --eval-only checks its eval cache
(formats/compute/policy_dirs.py RunOf).
"""

from __future__ import annotations

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
from kto.formats.errors import InputError, log
from kto.formats.paths import arrow_path
from kto.formats.runrecord import run_holding

if TYPE_CHECKING:
    import torch

    from kto.formats.compute.logprob import CompletionLogps
    from kto.formats.compute.numerics import Numerics
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

# Suffixes of formats other than Parquet: an --out named so is refused (score writes Parquet only).
OTHER_FORMATS = frozenset(
    ".jsonl .ndjson .json .csv .tsv .txt .arrow .feather .ipc .avro .orc .xlsx .xls .pkl .pickle .npy .npz .h5 .hdf5 .db .sqlite "
    ".html .md .yaml .yml .gz .bz2 .xz .zst .zip .tar".split()
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
    if str(out) == "-":  # a file named `-`, not standard output, which would read as one
        raise InputError("--out -: kto-inspect score writes a Parquet file, not standard output; name the file (e.g. scores.parquet)")
    if _parquet_name(out) != out:  # Parquet under a .jsonl or .csv name fails far away, in the reader the name picks
        raise InputError(f"--out {out}: kto-inspect score writes Parquet; name it {_parquet_name(out)} (read it with pl.read_parquet)")
    try:
        check_can_create(target)  # a read-only mount otherwise fails only at the write, after all the scoring
    except NotWritableError as exc:
        raise InputError(f"--out {exc}") from None


def _parquet_name(out: Path) -> Path:
    """`out`, or where its suffix names another format (OTHER_FORMATS), the name with .parquet
    instead of every such suffix (scores.jsonl.gz: scores.parquet). No suffix, .parquet, .pq and
    a dot that names no format (scores.beta0.5) are kept."""
    if out.suffix.lower() not in OTHER_FORMATS:
        return out
    while out.suffix.lower() in OTHER_FORMATS:
        out = out.with_suffix("")
    return out if out.suffix.lower() in (".parquet", ".pq") else out.with_name(out.name + ".parquet")  # scores.parquet.gz: scores.parquet


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
    _require_the_runs_reference(model, cache_dir, manifest)  # before the model loads
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


def _require_the_runs_reference(model: str, cache_dir: Path, manifest: Manifest) -> None:
    """A policy in a kto-train run (RUN/final, final-merged, checkpoint-STEP): the cache must be
    scored by the run's reference, checked as kto-train --eval-only checks its eval cache
    (policy_dirs.RunOf); another reference's log-probs would make every reward wrong. A model
    with no run record is scored on any cache: nothing says what it was trained against."""
    from kto.formats.compute.policy_dirs import RunOf

    RunOf.model(model).require_the_runs_reference(manifest, f"CACHE {cache_dir}", "score a cache of its reference")


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
        from kto.formats.compute.loading import load_completion_logps
        from kto.formats.compute.numerics import parse_numerics
        from kto.formats.compute.policy_dirs import policy_to_load, policy_tokenizer

        policy = policy_to_load(model, base_model)
        tokenizer = policy_tokenizer(policy, manifest.content.tokenizer, model, trust_remote_code)
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
        if policy.what:
            log(f"note: scoring {policy.what}")
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
