"""The keys of a metrics.jsonl line: train/ writes them, inspection/ reads them.

Every line of a run carries the same keys in the same order, `null` where a value does not
apply to the line (an eval line's `lr`), is undefined there (`rewards/rejected` of a window
without undesirable rows) or was not finite. Columnar readers infer a schema from the first
lines (polars: 100): with keys that first appear later (a run's first train line after 100
eval lines, `--log-every 120 --eval-every 1`) polars dropped those columns without a word. With
every key on every line, a reader gets every column, or polars' loud "non-null value for
NULL-typed column" error that README answers with `infer_schema_length=None`.

The key set is fixed, save one choice made from the run's configuration: the KL keys are
written only by a loss with a KL term. That one is kept because readers tell its two cases
apart: `kl` absent means no KL term (`--loss apo_zero_unpaired`), `kl` null means a KL
estimate that was not finite. Any finer set (by eval cache, prefix sharing, device) would have
to mirror every condition under which a metric is computed, and a condition missed would bring
the late-key problem back; a key that is null on every line costs nothing but a Null column.
"""

from __future__ import annotations

# Written by a loss with a KL term only (LossType.needs_kl).
KL_KEYS = ("kl", "kl_raw", "padding/kl")
# Every line's own: the loss and the class figures of a train window or an evaluation.
_EVERY_LINE = (
    "step",
    "split",
    "loss",
    "kto_loss",
    "sft_loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "count/chosen",
    "count/rejected",
)
# The training step's own figures: its packing, then the optimizer, speed and memory.
_PACKING = ("padding/policy", "tokens/saved")
# updates_skipped: of the window's steps, those whose update fp16's loss scaler skipped (a
# gradient overflowed); null without a loss scaler (fp32, bf16), which skips none.
_STEP = ("lr", "grad_norm", "updates_skipped", "epoch", "tokens_per_s", "peak_memory_gb", "rss_anon_gb", "rss_file_gb")

# null on every eval line by design: the training step's own figures.
TRAIN_ONLY_KEYS = (*_PACKING, "padding/kl", *_STEP)

# An eval line's eval cache: the first EVAL_CACHE_NAME_LEN hex digits of its fingerprint (a
# resume may change --eval-cache, and losses on two caches do not compare); null on train lines.
EVAL_CACHE_KEY = "eval_cache"
EVAL_CACHE_NAME_LEN = 12
EVAL_ONLY_KEYS = (EVAL_CACHE_KEY,)

# The order of a line, as train lines have always been written; the eval-only key last.
_ALL_KEYS = (*_EVERY_LINE, *_PACKING, *KL_KEYS, *_STEP, *EVAL_ONLY_KEYS)


def eval_cache_name(fingerprint: str) -> str:
    """What an eval line writes under EVAL_CACHE_KEY for the eval cache of this fingerprint."""
    return fingerprint[:EVAL_CACHE_NAME_LEN]


def metrics_keys(has_kl: bool) -> tuple[str, ...]:
    """The keys of every line of a run, in order; `has_kl`: its loss has a KL term."""
    return _ALL_KEYS if has_kl else tuple(k for k in _ALL_KEYS if k not in KL_KEYS)


def complete_line(record: dict, keys: tuple[str, ...], strict: bool = True) -> dict:
    """`record` with every key of `keys`, in their order, null where it has none.

    strict: a key outside `keys` is a bug of the writer (a metric added without adding it
    here), refused. Not strict (a line an older version wrote, kept by a resume): such keys
    follow, as they were."""
    extra = [k for k in record if k not in keys]
    if strict and extra:
        raise ValueError(f"metrics line keys {extra} are not in formats/metrics_line.py's key set")
    return {**{k: record.get(k) for k in keys}, **{k: record[k] for k in extra}}
