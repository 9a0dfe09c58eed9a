"""Paths as every command takes them: `~` expanded alike, names pyarrow can encode, and the text
handed to pyarrow.

A shell expands `~` only unquoted and at the start of a word, so `--out '~/run'`, `--out=~/run`
and a config file's `out: ~/run` reached the commands as a literal `~`: kto-train trained into
`./~/run` (transformers' TrainingArguments, as TRL uses it, expands output_dir: the same file
wrote elsewhere there), and kto-precompute made `./~/run/.lock` while pyarrow, which expands `~`
in every path it is given (pyarrow.util._stringify_path), wrote the staging file into
$HOME/run. Here every path flag and config value that starts with `~` means the home folder,
as --model always did (formats/compute/sources.py), and pyarrow is handed text that it cannot
expand again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from .errors import InputError

HF = "hf:"  # the prefix of a hub spec (`--data hf:ID:SPLIT`, `--cache hf:ORG/NAME`)


def expand_home(value: Any) -> Any:
    """`value` with a leading `~` or `~user` expanded, when it is text that starts with `~`;
    text naming a local `hf:…` file or folder (`./hf:x.jsonl`) made absolute; any other value as
    it is. Only such text: `hf:ORG/NAME` specs and hub ids keep their spelling,
    and a Path object is kept, since Path('./~') is Path('~'), a folder named `~` in the current
    directory that click already made into a Path. `~nosuchuser` stays as written (os.path's
    expanduser, not Path's, which raises)."""
    if isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    if isinstance(value, str) and not value.startswith(HF) and str(Path(value)).startswith(HF):
        # `./hf:x.jsonl`: Path drops the `./` and would leave an `hf:` spec (a hub dataset or
        # cache); made absolute, it stays the local file it names, as `./~` stays a folder `~`.
        return os.path.abspath(value)
    return value


def refuse_undecodable(path: str | os.PathLike, flag: str) -> None:
    """A one-line refusal of a path whose name is not UTF-8 (its bytes decode to lone
    surrogates): pyarrow encodes every path as UTF-8 and tokenizers' save_pretrained writes its
    JSON through one, so such a --out failed after every training step, and a cache in such a
    folder read as corrupt shards."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{flag} {ascii(text)}: the path is not valid UTF-8, which pyarrow and tokenizers need; rename it") from None


def arrow_path(path: str | os.PathLike) -> str:
    """`path` as text for pyarrow: relative ones start with `./`, so a folder literally named `~`
    is never taken for the home folder by pyarrow's own expansion. Not made absolute: the
    current directory's own name need not be UTF-8, nor the directory still exist."""
    return os.path.join(os.curdir, os.fspath(path))


class HomePath(click.Path):
    """click.Path (as a pathlib.Path) with a leading `~` expanded: for every path option and
    argument, and for a config file's value of one (formats' option_value converts it with the
    option's own type)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(path_type=Path, **kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        refuse_empty(self, value, param, ctx)
        return super().convert(expand_home(value), param, ctx)


class HomeText(click.types.StringParamType):
    """Text with a leading `~` expanded, for the options that take a path among other things
    (--resume: a checkpoint or nothing; --sharegpt-info: FILE or FILE#NAME)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        refuse_empty(self, value, param, ctx)
        return expand_home(super().convert(value, param, ctx))


EMPTY_PATH = "an empty path (it would mean the current directory; write . where that is meant)"


def refuse_empty(kind: click.ParamType, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> None:
    """An empty path is refused, naming its flag (click's `Invalid value for '--out'`): Path('')
    is the current directory, so `--out ''` wrote the whole cache there and `kto-inspect run RUN
    --to ''` its report. A config file's `out: ''` is refused as well (config_file.option_value)."""
    if isinstance(value, str) and value == "":
        kind.fail(EMPTY_PATH, param, ctx)


HOME_PATH = HomePath()
HOME_TEXT = HomeText()
