"""`kto-inspect`: look at a cache or a run before trusting it.

    kto-inspect summary CACHE [--json]
    kto-inspect verify  CACHE
    kto-inspect rows    CACHE [--where SQL] [--sort SQL] [--limit N] [--flag K] [--json]
    kto-inspect run     OUT   [--to DIR] [--json]
    kto-inspect score   CACHE --model POLICY [--out FILE] [--beta B] ... [--json]
    kto-inspect export  CHECKPOINT OUT [--merge] [--base-model BASE]

Exit codes: 0 fine; 1 `verify` found a problem; 2 bad input, or a stdout closed or full
(message on one line, prefixed `kto-inspect: error:`); 128 + N a stop signal N during score or
run (one line; the write under way leaves no temp file); 141 the output pipe was closed (`| head`). Heavy imports (polars, torch, matplotlib) happen inside the commands,
so `kto-inspect --help` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import click

from kto.formats.compute.numerics import NAMES as NUMERICS
from kto.formats.errors import InputError, exit_with_usage_line, import_or_refuse, one_line_errors, one_line_usage
from kto.formats.paths import HOME_PATH, refuse_undecodable
from kto.formats.signals import console_error, dropped, raising_on_stop_signals

from .text import printable

P = HOME_PATH  # `~` expanded in every argument and path option, as kto-train's and kto-precompute's
CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"]}


PROG = "kto-inspect"
_handles_input_errors = one_line_errors(PROG)
# polars is a dependency (pyproject's bound), but an install made with --no-deps, as the GPU
# image's is, can lack it; summary and rows read the shards through it.
POLARS_HINT = "pip install 'polars>=1.36'"


def _need_polars(command: str) -> None:
    """Refuse on one line (exit 2) where polars is missing, before a hub cache is fetched or a
    shard read: without this, the import deep in the readers ended in a 31-line traceback."""
    import_or_refuse(
        "polars",
        missing=f"{command} reads the cache with polars, which is not installed: {POLARS_HINT}",
        broken=f"{command} reads the cache with polars, which is installed but does not import",
    )


def _local(cache: Path) -> Path:
    """CACHE as given, or for `hf:ORG/NAME[/eval]` the dataset repo pulled into the local HF
    cache; either way the readers check it against its manifest."""
    from kto.formats.hub import fetch_cache, is_hub_cache

    return fetch_cache(cache, "CACHE") if is_hub_cache(cache) else cache


def _named(path: Path, flag: str = "CACHE") -> Path:
    """`path`, refused first when its name is not UTF-8: pyarrow, which opens the shards and
    writes --out, encodes every path as UTF-8, and such a cache read as corrupt shards. First in
    each command, before the readers (and transformers, torch) are imported."""
    refuse_undecodable(path, flag)
    return path


def _emit(data, as_json: bool, render) -> None:
    _write_out(json.dumps(data, indent=2, default=str) if as_json else render(data))


def _write_out(text: str) -> None:
    """`text` and a newline on stdout, every byte or a BrokenPipeError (exit 141, _Group).

    Through sys.stdout, a reader that closes the pipe mid-output (`rows --json | head -1`)
    lost the rest without a word: CPython 3.11 wrote 64 KiB of 117 KiB, took the SIGPIPE,
    made no second write, and the command exited 0. os.write reports each short write, and the
    next one raises EPIPE. Captured output without a descriptor (tests) goes through click.
    A stdout closed (`>&-`) or full (`> /dev/full`, a disk that filled) is one line, exit 2:
    click.echo wrote nothing to a closed one without a word (exit 0), and a full one raised a
    traceback."""
    if sys.stdout is None:
        _unwritten(OSError(errno.EBADF, "closed"))
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        click.echo(text)
        return
    try:
        sys.stdout.flush()
        data = memoryview((text + "\n").encode(sys.stdout.encoding or "utf-8", errors="replace"))
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:  # a non-blocking stdout that is full: wait until it drains
                select.select([], [fd], [])
    except BrokenPipeError:
        raise  # exit 141 (_Group)
    except OSError as exc:
        dropped(sys.stdout)  # what sys.stdout's buffer holds is not tried again at exit
        _unwritten(exc)


def _unwritten(exc: OSError) -> NoReturn:
    raise InputError(f"{console_error('stdout', exc)}: the output was not written")


class _Group(one_line_usage(PROG, click.Group)):
    """click turns a closed output pipe (EPIPE) into exit 1, which for `verify` means "found a
    problem". Here it is exit 141 (128 + SIGPIPE, what a shell reports for a command killed by
    it), quietly, for --help and --version too. Usage errors are one line (one_line_usage), the
    subcommands' too (command_class) and an unknown subcommand's."""

    command_class = one_line_usage(PROG)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            exit_with_usage_line(PROG, exc)

    def make_context(self, *args, **kwargs) -> click.Context:
        with _closed_pipe_exits():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        with _closed_pipe_exits():
            try:
                return super().invoke(ctx)
            finally:
                if sys.stdout is not None:  # None: closed (`>&-`), said by _write_out
                    sys.stdout.flush()  # a closed pipe is raised here, not at interpreter exit


@contextlib.contextmanager
def _closed_pipe_exits() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        # As Python's docs on SIGPIPE advise: point stdout at devnull, so that the flush at
        # interpreter exit finds no pipe to fail on and prints no second error.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (tests' capture)
            pass
        raise click.exceptions.Exit(128 + signal.SIGPIPE) from None


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="kto-offline", prog_name="kto-inspect")
def main() -> None:
    """Inspect a kto-precompute cache or a kto-train run."""


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=P)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_handles_input_errors
def summary(cache: Path, as_json: bool) -> None:
    """Counts by label, token lengths, reference log-probs by label, truncation, fingerprint, and what made the cache (inputs, settings, versions)."""
    _named(cache)
    _need_polars("summary")
    from .summary import render, summarize

    _emit(summarize(_local(cache)), as_json, render)


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=P)
@_handles_input_errors
def verify(cache: Path) -> None:
    """Re-hash every shard and check provenance, schema, values, manifest counts, ids and KL sources (exit 1 on a problem; a folder without manifest.json is refused, exit 2)."""
    _named(cache)
    from .verify import verify as run_verify

    reports = run_verify(_local(cache))
    for r in reports:
        for problem in r.problems:
            click.echo(f"kto-inspect: verify: {printable(problem)}", err=True)
        # Through _write_out: a stdout that cannot take the verdict is exit 2, not 1 ("found a problem").
        if r.ok:
            _write_out(
                f"ok: {r.cache}: {r.rows} rows in {r.shards} shards; checksums, fingerprints, schema, values, counts, ids and KL sources agree with the manifest"
            )
        else:  # stdout tells each split's verdict, so `verify CACHE > log` is not only the good ones
            _write_out(f"FAILED: {r.cache}: {len(r.problems)} problem(s), listed on stderr")
    bad = sum(len(r.problems) for r in reports)
    if bad:
        click.echo(f"kto-inspect: verify: {bad} problem(s) found in {cache}", err=True)
        sys.exit(1)


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=P)
@click.option("--where", default=None, help='SQL condition, e.g. "label AND completion_len > 100" (polars SQL).')
@click.option("--sort", default=None, help='SQL sort keys, e.g. "ref_logp_per_token ASC, id".')
@click.option("--limit", default=10, help="Rows to show.")
@click.option("--flag", default=3, help="Mark the K least likely completion tokens of each row.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_handles_input_errors
def rows(cache: Path, where: str | None, sort: str | None, limit: int, flag: int, as_json: bool) -> None:
    """Show selected rows: decoded prompt, completion, KL completion, per-token reference log-probs.

    Columns for --where/--sort: the shard columns plus prompt_len, completion_len,
    kl_completion_len and ref_logp_per_token."""
    _named(cache)
    _need_polars("rows")
    from .rows import describe_rows, load_cache_tokenizer, render, select_rows

    if flag < 0:
        raise InputError(f"--flag {flag}: must be 0 or more")
    cache = _local(cache)
    df = select_rows(cache, where=where, sort=sort, limit=limit)
    _emit(describe_rows(df, load_cache_tokenizer(cache), flag=flag), as_json, render)


@main.command(context_settings=CONTEXT)
@click.argument("out", type=P)
@click.option(
    "--to", "to", type=P, default=None, help="Where to write the PNGs and report.html [default: OUT/report, or OUT/report/NAME for a metrics file NAME]."
)
@click.option("--sft", is_flag=True, help="Also plot the SFT loss [default: only when the run's --sft-weight > 0].")
@click.option(
    "--smooth",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.6,
    show_default=True,
    help="EMA weight of the train lines, drawn over their raw values faded (0: as they are; lr never).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_handles_input_errors
def run(out: Path, to: Path | None, sft: bool, smooth: float, as_json: bool) -> None:
    """Plot a run's metrics.jsonl (loss, KL, rewards, lr, grad norm, tokens/s) into report.html."""
    with raising_on_stop_signals():  # see score: a stop leaves no temp file
        from .report import build_report, render

        result = build_report(out, to, sft=sft, smooth=smooth)
    for warning in result["warnings"]:
        click.echo(f"kto-inspect: warning: {printable(warning)}", err=True)
    _emit(result, as_json, render)


@main.command(context_settings=CONTEXT)
@click.argument("cache", type=P)
@click.option(
    "--model", required=True, help="Policy to score: local HF dir (e.g. OUT/final, OUT/checkpoint-STEP, --fsdp's too), PEFT adapter dir, .gguf file or hub id."
)
@click.option("--base-model", default=None, help="Base of an adapter dir or an --fsdp checkpoint [default: the one its adapter_config.json or run names].")
@click.option(
    "--out",
    type=P,
    default=Path("scores.parquet"),
    help="Parquet file to write (keyed by id): named .parquet, .pq or with no suffix; another format's name (.jsonl, .csv, .arrow, ...) is refused.",
)
@click.option(
    "--beta",
    default=None,
    type=float,
    help="β of the implicit reward β·(log πθ − log πref) [default: the run's, read from RUN/kto_run.json "
    "when --model is RUN/final, RUN/final-merged or RUN/checkpoint-STEP (also one set aside as .superseded or .corrupt); else 0.1].",
)
@click.option("--batch-tokens", default=None, type=int, help="Padded tokens per scoring batch [default: 16384 on a GPU, 2048 on CPU].")
@click.option(
    "--dtype",
    default="auto",
    type=click.Choice(NUMERICS),
    help="As kto-precompute's: auto = amp-bf16 on CUDA, fp32 on CPU. Match the cache's for unbiased rewards.",
)
@click.option("--chunk-size", default=1024, help="Completion positions per LM-head chunk.")
@click.option("--attn-implementation", default="sdpa", help="transformers attention implementation.")
@click.option("--trust-remote-code", is_flag=True, help="Allow code from the model repo to run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_handles_input_errors
def score(cache: Path, model: str, out: Path, as_json: bool, **options) -> None:
    """Give every cached row the policy's implicit reward; report who gained and who lost log-prob."""
    _named(cache), _named(out, "--out")
    # SIGTERM, SIGHUP (and SIGINT, SIGUSR1) raise Stopped, as in kto-precompute: the atomic write
    # under way removes its temp name (its default action ended the process and left
    # `.NAME.tmp-PID-TID` beside --out for good), and one_line_errors says the signal in one line.
    # Not around _emit: its own handling of a closed stdout (exit 141) is not the console's.
    with raising_on_stop_signals():
        from .score import render, score_cache

        result = score_cache(_local(cache), model, out, log=lambda msg: click.echo(msg, err=True), **options)
    _emit(result, as_json, render)


@main.command(context_settings=CONTEXT)
@click.argument("checkpoint", type=P)
@click.argument("out", type=P)
@click.option("--merge", is_flag=True, help="LoRA: write the adapters merged into their base (a model directory, as final-merged/).")
@click.option("--base-model", default=None, help="The model the checkpoint trained [default: the one its run or adapter_config.json names].")
@click.option("--trust-remote-code", is_flag=True, help="Allow code from the model repo to run.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_handles_input_errors
def export(checkpoint: Path, out: Path, merge: bool, base_model: str | None, trust_remote_code: bool, as_json: bool) -> None:
    """Write an FSDP run's RUN/checkpoint-STEP as the folder a run without --fsdp saves (HF model, or LoRA adapters) at OUT, a new folder."""
    _named(checkpoint, "CHECKPOINT"), _named(out, "OUT")
    from .export import export_checkpoint

    result = export_checkpoint(checkpoint, out, merge, base_model, trust_remote_code, log=lambda msg: click.echo(msg, err=True))
    _emit(result, as_json, lambda r: f"wrote {printable(r['out'])}: {r['holds']}, {r['dtype']}, from {printable(r['checkpoint'])}")


if __name__ == "__main__":
    main()
