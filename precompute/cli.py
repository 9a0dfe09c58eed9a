"""`kto-precompute`: score every example and its mismatched KL completion into Arrow shards.

Values come from defaults, then `--config FILE` (keys are the flags' names; the loader is
kto-train's, formats/config_file.py), then flags actually given on the command line. Config
values are checked as kto-train checks its own (`_config_value`): a YAML string "64" as an int
flag's text would be, while true, 64.7 or a list for an int option is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kto.formats.config_file import PRECOMPUTE, Resolved, file_key_error, option_value, resolve_config_file
from kto.formats.config_keys import names_other_tools_use
from kto.formats.errors import InputError, end_process_group, exit_on_signal, log, one_line_errors
from kto.formats.paths import HOME_PATH, HOME_TEXT
from kto.formats.signals import Stopped, raising_on_stop_signals
from kto.precompute.inputs.dataset_info import load_datasets
from kto.precompute.inputs.examples import ColumnMap, ShareGPTMap
from kto.precompute.inputs.sharegpt import load_sharegpt_info

from .config import DTYPES, PrecomputeConfig


@click.command(cls=names_other_tools_use(PRECOMPUTE), context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    "data",
    multiple=True,
    type=HOME_PATH,
    help="Input file (JSONL, JSON, Parquet, CSV, Arrow), hf:ID[:CONFIG]:SPLIT (hub id or local "
    "directory, through `datasets`) or a save_to_disk directory; repeatable.",
)
@click.option(
    "--eval-data",
    multiple=True,
    type=HOME_PATH,
    help="Held-out input (as --data; repeatable), scored into OUT/eval/ with KL pairs of its own, instead of --eval-fraction.",
)
@click.option("--model", help="Reference model: local HF dir, .gguf file, or hub id.")
@click.option("--out", type=HOME_PATH, help="Cache directory to write.")
@click.option("--config", "config_file", type=HOME_PATH, default=None, help="YAML or TOML file of flag values; flags given here win.")
@click.option("--chat-template", type=HOME_PATH, default=None, help="Jinja file replacing the tokenizer's chat template.")
@click.option("--chat-template-kwargs", default=None, help="JSON object passed to apply_chat_template, e.g. '{\"enable_thinking\": false}'.")
@click.option("--dataset", default=None, help="LLaMA-Factory dataset_info.json entry NAME (or a comma list): its file, formatting, columns, tags, ranking.")
@click.option("--dataset-dir", type=HOME_PATH, default=Path("data"), help="The folder of dataset_info.json (its file_name paths are relative to it).")
@click.option("--sharegpt-info", type=HOME_TEXT, default=None, help="LLaMA-Factory dataset_info.json (FILE or FILE#NAME): ShareGPT column and role names.")
@click.option("--max-length", default=1024, help="Longest prompt+completion, in tokens.")
@click.option("--max-prompt-length", default=None, type=int, help="Longest prompt (end kept) [default: max-length // 2].")
@click.option("--max-samples", default=None, type=int, help="A seeded sample of at most N rows of each --data (and --eval-data) input.")
@click.option("--eval-fraction", default=0.0, help="Seeded fraction held out as OUT/eval/.")
@click.option("--seed", default=0, help="Seed of the eval split, the KL pairing and the --max-samples sample.")
@click.option(
    "--dtype",
    default="auto",
    type=click.Choice(DTYPES),
    help="auto = amp-bf16 (fp32 weights, bf16 autocast: kto-train's default) on CUDA, fp32 on CPU; bf16 = pure bf16 weights.",
)
@click.option("--attn-implementation", default="sdpa", help="transformers attention implementation.")
@click.option(
    "--batch-tokens",
    default=None,
    type=int,
    help="Padded tokens per scoring batch [default: the budget of the cache being resumed; else 16384 on a GPU, 2048 on CPU].",
)
@click.option("--rows-per-shard", default=4096, help="Rows per Arrow shard.")
@click.option("--token-logps/--no-token-logps", "store_token_logps", default=True, help="Store per-token reference log-probs.")
@click.option(
    "--prefix-sharing/--no-prefix-sharing", default=True, help="Score each distinct prompt once, followed by all its completions (same numbers, less compute)."
)
@click.option("--chunk-size", default=1024, help="Completion positions per LM-head chunk.")
@click.option("--trust-remote-code", is_flag=True, help="Allow code from the model repo to run.")
@click.option("--device-map", default=None, help="'auto' spreads one model over several GPUs.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a cache of another configuration in --out. The new cache is built in --out/.next/ (twice the disk space meanwhile)"
    " and swapped in once complete: until then the old cache stays whole, and a stopped run resumes with the same command."
    " A kto-train already reading the old cache finishes on it (it holds every shard open).",
)
@click.option("--push-to-hub", default=None, help="Upload the finished cache to this hub dataset repo (ORG/NAME), created (token checked) before scoring.")
@click.option("--hub-private/--no-hub-private", default=False, help="Create the --push-to-hub repo private (--no-hub-private: public, over a config file).")
@click.option("--prompt-column", default="prompt")
@click.option("--completion-column", default="completion")
@click.option("--label-column", default="label")
@click.option("--messages-column", default="messages")
@click.option("--chosen-column", default="chosen")
@click.option("--rejected-column", default="rejected")
@click.option("--id-column", default="id", help="Column of unique row ids ('': none; rows are named FILE:ROW).")
@click.option("--system-column", default=None, help="System prompt column [default: the ShareGPT map's, 'system'; '' reads none].")
@click.option("--tools-column", default=None, help="Tool schemas column [default: the ShareGPT map's, 'tools'; '' reads none].")
@click.version_option(package_name="kto-offline", prog_name="kto-precompute")
@click.pass_context
@one_line_errors("kto-precompute")
def main(ctx: click.Context, config_file: Path | None, **flags) -> None:
    """Run the frozen reference model once over every example and its KL pair; write shards."""
    with raising_on_stop_signals():  # first thing: a SIGTERM while torch imports is said too
        from .api import check_paths, run  # the Python API: this command is flags → PrecomputeConfig → run()

        try:
            with config_in_force(ctx, config_file, flags, check=check_paths) as cfg:  # its refusals name the file's key; run() repeats them (cheap)
                run(cfg)  # and names the file's key in its own
        except Stopped as exc:  # every file is written under a temp name and renamed: what is in place is whole
            exit_on_signal("kto-precompute", exc.signum, "finished shards are kept; run the same command again to resume")
    end_process_group(every_rank_here=True)  # the command ends here, on every rank (the API keeps a launcher's group for a caller)


def config_from(ctx: click.Context, config_file: Path | None, flags: dict, check: Callable[[PrecomputeConfig], None] = lambda cfg: None) -> PrecomputeConfig:
    """Defaults < --config FILE < command-line flags, then one PrecomputeConfig, `check`ed (the
    API's start-up path checks): a refusal of a value the file set names the file's key."""
    with config_in_force(ctx, config_file, flags, check) as cfg:
        return cfg


@contextlib.contextmanager
def config_in_force(ctx: click.Context, config_file: Path | None, flags: dict, check: Callable[[PrecomputeConfig], None]) -> Iterator[PrecomputeConfig]:
    """config_from's PrecomputeConfig, for the body of the with: a refusal raised in it (the
    run's) names the file's key as well, when the file set that option."""
    values, resolved = _file_values(ctx, config_file) if config_file else ({}, Resolved())
    given = lambda name: ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    for name, value in flags.items():
        if given(name) or name not in values:
            values[name] = value
    try:
        cfg = _config(values)
        check(cfg)
        yield cfg
    except InputError as exc:
        # A range check names the flag; a value the file set is named by the file's key.
        raise (file_key_error(exc, config_file, PRECOMPUTE, resolved, values, given) if config_file else exc) from None


def _config(values: dict) -> PrecomputeConfig:
    """The merged values (a copy is taken) as one PrecomputeConfig."""
    values = dict(values)
    dataset, dataset_dir = values.pop("dataset"), values.pop("dataset_dir")
    if dataset == "":  # was taken for no --dataset: the --data (or nothing) read instead
        raise InputError("--dataset '': empty; name an entry of dataset_info.json, or leave the flag out")
    entry = load_datasets(dataset, dataset_dir) if dataset else None
    if entry and values.get("sharegpt_info"):
        raise InputError(f"--dataset {dataset} and --sharegpt-info: the entry names the columns and tags already; give one")
    if entry:
        values["sample_spans"] = (1,) * len(values.get("data") or ()) + entry.spans
        values["data"] = (*values.get("data", ()), *map(Path, entry.data))
    for name in ("data", "model", "out"):
        if not values.get(name):
            # In a file, the output is `cache:`, which kto-train reads as its --cache; `out:` there
            # would also be kto-train's run, which a TRL file names as output_dir (refused twice).
            where = ", or cache: DIR in --config, the key kto-train reads its --cache from too" if name == "out" else " or in --config; --dataset gives --data"
            raise InputError(f"--{name} is required (on the command line{where})")
    sharegpt = values.pop("sharegpt_info")
    sharegpt = entry.sharegpt if entry else load_sharegpt_info(sharegpt) if sharegpt else ShareGPTMap()
    overrides = {k: values.pop(f"{k}_column") for k in ("system", "tools")}
    for key, name in overrides.items():
        if name and not name.strip():  # '' reads none; blanks name no column (ShareGPTMap's refusal names no flag)
            raise InputError(f"--{key}-column {name!r}: a column name, or '' to read none")
    sharegpt = ShareGPTMap(**{**sharegpt.as_dict(), **{k: v for k, v in overrides.items() if v is not None}})  # '': no such column
    columns = ColumnMap(**{k.removesuffix("_column"): values.pop(k) for k in list(values) if k.endswith("_column")})
    kwargs = values.pop("chat_template_kwargs")
    alpaca = entry.alpaca if entry else None
    return PrecomputeConfig(
        data=tuple(values.pop("data")), columns=columns, sharegpt=sharegpt, alpaca=alpaca, chat_template_kwargs={} if kwargs is None else kwargs, **values
    )


def _file_values(ctx: click.Context, path: Path) -> tuple[dict, Resolved]:
    """The file's values under our option names, converted as the flags' types, and what the file resolved to."""
    params = {p.name: p for p in ctx.command.params if p.name != "config_file"}
    resolved = resolve_config_file(path, PRECOMPUTE, params)
    for note in resolved.notes:
        log(f"kto-precompute: {note}")
    for name, note in resolved.default_notes.items():
        if ctx.get_parameter_source(name) != click.core.ParameterSource.COMMANDLINE:  # the flag wins, and says nothing
            log(f"kto-precompute: {note}")
    values = {}
    for name, value in resolved.values.items():
        if name in ("sharegpt_info", "chat_template_kwargs") and isinstance(value, dict):
            # sharegpt_info: an inline dataset_info entry ({columns: ..., tags: ...});
            # chat_template_kwargs: a mapping in YAML/TOML is the JSON object itself.
            values[name] = value
            continue
        # Errors name the key as the file spells it (cutoff_len, not max_length).
        values[name] = _config_value(params[name], f"--config {path}: {resolved.origin.get(name, name)}", value)
    return values, resolved


def _config_value(param: click.Parameter, where: str, value: Any) -> Any:
    """A --config value converted and checked as the flag's own type would be on the command line.

    formats' `option_value`, as kto-train's; plus lists for the repeatable --data. click's own
    conversion (`type_cast_value`) raised a TypeError traceback for `rows_per_shard: [1, 2]`, and
    took 64.7 for 64 and true for 1, as Python's int() does."""
    if value is not None and param.multiple:
        items = value if isinstance(value, list) else [value]  # `data: file.jsonl` means one input
        return tuple(option_value(param, where, item) for item in items)
    return option_value(param, where, value)


if __name__ == "__main__":
    main()
