"""`kto-precompute`: score every example and its mismatched KL completion into Arrow shards."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kto.formats.errors import InputError
from kto.formats.examples import ColumnMap

from .config import DTYPES, PrecomputeConfig


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Input file (JSONL, JSON, Parquet, CSV, Arrow); repeatable.")
@click.option("--model", required=True, help="Reference model: local HF dir, .gguf file, or hub id.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Cache directory to write.")
@click.option("--max-length", default=1024, help="Longest prompt+completion, in tokens.")
@click.option("--max-prompt-length", default=None, type=int, help="Longest prompt (end kept) [default: max-length // 2].")
@click.option("--eval-fraction", default=0.0, help="Seeded fraction held out as OUT/eval/.")
@click.option("--seed", default=0, help="Seed of the eval split and the KL pairing.")
@click.option("--dtype", default="auto", type=click.Choice(DTYPES), help="auto = amp-bf16 (fp32 weights, bf16 autocast: kto-train's default) on CUDA, fp32 on CPU; bf16 = pure bf16 weights.")
@click.option("--attn-implementation", default="sdpa", help="transformers attention implementation.")
@click.option("--batch-tokens", default=16384, help="Padded tokens per scoring batch.")
@click.option("--rows-per-shard", default=4096, help="Rows per Arrow shard.")
@click.option("--token-logps/--no-token-logps", "store_token_logps", default=True, help="Store per-token reference log-probs.")
@click.option("--chunk-size", default=1024, help="Completion positions per LM-head chunk.")
@click.option("--trust-remote-code", is_flag=True, help="Allow code from the model repo to run.")
@click.option("--device-map", default=None, help="'auto' spreads one model over several GPUs.")
@click.option("--overwrite", is_flag=True, help="Replace a cache of another configuration in --out.")
@click.option("--prompt-column", default="prompt")
@click.option("--completion-column", default="completion")
@click.option("--label-column", default="label")
@click.option("--messages-column", default="messages")
@click.option("--chosen-column", default="chosen")
@click.option("--rejected-column", default="rejected")
@click.option("--id-column", default="id")
def main(**kw) -> None:
    """Run the frozen reference model once over every example and its KL pair; write shards."""
    from .pipeline import run_precompute

    columns = ColumnMap(**{k.removesuffix("_column"): kw.pop(k) for k in list(kw) if k.endswith("_column")})
    try:
        cfg = PrecomputeConfig(data=tuple(kw.pop("data")), columns=columns, **kw)
        run_precompute(cfg)
    except InputError as exc:
        click.echo(f"kto-precompute: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
