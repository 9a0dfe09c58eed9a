"""PrecomputeConfig: every `kto-precompute` option, one field each (the CLI mirrors these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kto.formats.cache import refuse_inside_others
from kto.formats.compute.numerics import NAMES as DTYPES
from kto.formats.config_types import check_field_types
from kto.formats.errors import InputError
from kto.formats.files import output_dir
from kto.formats.hub import check_repo_id
from kto.precompute.inputs.alpaca import AlpacaMap
from kto.precompute.inputs.examples import ColumnMap, ShareGPTMap
from kto.precompute.inputs.records import check_input_kind

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# [least, most] of each integer setting, checked before anything is read or written: the
# pipeline puts them into numpy and torch integers, where --max-length 10**20 raised OverflowError
# in precompute/plan.py pair_rows after the model had loaded, leaving a half-written --out.
# Token ids and each row's positions are int32 Arrow lists with int32 offsets (formats/schema.py),
# so a sequence, a shard's rows, a batch's padded tokens and an LM-head chunk stay under 2**31.
INT_RANGES = {
    "max_length": (2, INT32_MAX),
    "max_prompt_length": (1, INT32_MAX),  # and below max_length (checked after)
    "max_samples": (1, INT64_MAX),  # a row count; row indices are numpy int64
    "seed": (0, 2**32 - 1),  # numpy's seeds; kto-train's --seed takes the same range
    "batch_tokens": (1, INT32_MAX),
    "rows_per_shard": (1, INT32_MAX),
    "chunk_size": (1, INT32_MAX),
}


@dataclass(frozen=True)
class PrecomputeConfig:
    data: tuple[Path, ...]
    """Inputs, read in order: files (JSONL, JSON, Parquet, CSV, Arrow), `hf:ID[:CONFIG]:SPLIT`
    datasets (hub id or local directory) and `save_to_disk` directories (precompute/inputs/hub.py)."""
    model: str
    """Reference model: a local HF dir, a `.gguf` file, or a hub id."""
    out: Path
    """Cache directory to write (shards, manifest.json, tokenizer/, eval/)."""
    columns: ColumnMap = field(default_factory=ColumnMap)
    """Input column names."""
    sharegpt: ShareGPTMap = field(default_factory=ShareGPTMap)
    """LLaMA-Factory ShareGPT column and role names; its system/tools columns apply to every shape."""
    alpaca: AlpacaMap | None = None
    """Read every row as LLaMA-Factory alpaca with these column names (set by --dataset for an
    entry of that formatting; precompute/inputs/dataset_info.py)."""
    chat_template: Path | None = None
    """A Jinja file replacing the tokenizer's chat template (saved into the cache's tokenizer/)."""
    chat_template_kwargs: dict = field(default_factory=dict)
    """Extra template variables passed to apply_chat_template, e.g. {"enable_thinking": false}."""
    max_length: int = 1024
    """Longest prompt+completion, in tokens."""
    max_prompt_length: int | None = None
    """Longest prompt (its end is kept); default max_length // 2."""
    max_samples: int | None = None
    """Keep a seeded sample of at most this many rows of each input (inputs.records.RowSample)."""
    sample_spans: tuple[int, ...] = ()
    """How many consecutive `data` inputs each dataset is, for max_samples: a --dataset entry
    whose file_name is a folder is all its files, one dataset as LLaMA-Factory loads it (set by
    --dataset; inputs past the spans are one dataset each)."""
    eval_fraction: float = 0.0
    """Seeded fraction of rows held out as a separate cache in OUT/eval/."""
    eval_data: tuple[Path, ...] = ()
    """Held-out inputs (as `data`) whose rows are OUT/eval/, paired among themselves: a dataset's
    own test split (TRL's dataset_test_split), instead of eval_fraction."""
    seed: int = 0
    """Seed of the eval split, of the KL pairing and of --max-samples' sample."""
    dtype: str = "auto"
    """Numerics: auto (amp-bf16 on CUDA = fp32 weights under bf16 autocast, as kto-train's
    default; fp32 on CPU), fp32, bf16, fp16 (pure weights) or amp-bf16, amp-fp16."""
    attn_implementation: str = "sdpa"
    """transformers attention implementation."""
    batch_tokens: int | None = None
    """Padded tokens per scoring batch. None: the budget of the cache being resumed in `out`, else
    16384 on a GPU and 2048 on CPU (formats/compute/scoring.py, `default_batch_tokens`)."""
    rows_per_shard: int = 4096
    """Rows per Arrow shard."""
    store_token_logps: bool = True
    """Also store per-token reference log-probs."""
    prefix_sharing: bool = True
    """Run each distinct prompt through the reference once, followed by all its completions
    (formats/compute/shared_prefix.py); the same numbers (docs/design.md), less compute."""
    chunk_size: int = 1024
    """Completion positions per LM-head chunk (memory: chunk × vocab fp32)."""
    trust_remote_code: bool = False
    """Allow code from the model repo to run."""
    device_map: str | None = None
    """`auto` spreads one large model over several GPUs."""
    overwrite: bool = False
    """Replace a cache of a different configuration in `out`."""
    push_to_hub: str | None = None
    """Upload the finished cache (shards, manifest, tokenizer/, eval/) to this hub dataset repo, ORG/NAME."""
    hub_private: bool = False
    """Create the --push-to-hub repo private."""

    @property
    def prompt_cap(self) -> int:
        """--max-prompt-length, or max_length // 2 when it was left out. Derived on each read, not
        written into the field: dataclasses.replace(cfg, max_length=...) then derives it anew."""
        return self.max_length // 2 if self.max_prompt_length is None else self.max_prompt_length

    def __post_init__(self):
        from .templates import parse_kwargs

        # Every field as its annotation says (formats/config_types.py, as TrainConfig's); the
        # template kwargs are JSON text or a mapping, which parse_kwargs checks.
        check_field_types(self, text_paths=("model",), skip=("chat_template_kwargs",))
        for name in ("device_map", "chat_template_kwargs"):  # '' was taken for none, silently
            if getattr(self, name) == "":
                raise InputError(f"--{_flag(name)} '': empty; leave the flag out for none")
        object.__setattr__(self, "chat_template_kwargs", parse_kwargs(self.chat_template_kwargs))
        for name, (least, most) in INT_RANGES.items():
            value = getattr(self, name)
            if value is not None and not least <= value <= most:
                raise InputError(f"--{_flag(name)} {value}: must be in {_range(least, most)}")
        if not self.prompt_cap < self.max_length:
            raise InputError(f"--max-prompt-length {self.prompt_cap}: must be positive and smaller than --max-length {self.max_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise InputError(f"--eval-fraction {self.eval_fraction}: must be in [0, 1)")
        if self.eval_data and self.eval_fraction > 0:
            raise InputError(f"--eval-data and --eval-fraction {self.eval_fraction}: give one (the eval rows are held-out inputs, or a share of --data)")
        if any(n < 1 for n in self.sample_spans) or sum(self.sample_spans) > len(self.data):
            raise InputError(f"sample_spans {self.sample_spans}: must be positive counts of consecutive --data inputs, {len(self.data)} in all")
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype}: choose one of {', '.join(DTYPES)}")
        if self.push_to_hub is not None:
            check_repo_id(self.push_to_hub)
        elif self.hub_private:
            raise InputError("--hub-private: needs --push-to-hub ORG/NAME")
        for name in ("data", "eval_data"):
            for path in getattr(self, name):
                check_input_kind(path, f"--{_flag(name)}")
        output_dir(self.out, f"--out {self.out}")
        refuse_inside_others(Path(self.out))


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _range(least: int, most: int) -> str:
    """[least, most], a bound of 2**k - 1 written [least, 2**k) as kto-train writes its --seed's."""
    power = (most + 1).bit_length() - 1
    return f"[{least}, 2**{power})" if most > 2**16 and most + 1 == 2**power else f"[{least}, {most}]"
