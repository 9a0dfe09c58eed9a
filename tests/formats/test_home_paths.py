"""`~` means the home folder in every path flag and config-file value of the three commands, as it
did in --model alone (formats/paths.py): quoted on the command line (`--out '~/run'`), after `=`,
or in a --config file, where no shell expands it. Text that does not start with `~` (an
`hf:` spec, a hub id, `./~`) keeps its spelling, and pyarrow is never handed a path it would
expand again, so a real folder named `~` in the current directory is written where asked."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import precompute_args, text_rows, write_rows

from kto.formats.config_types import typed
from kto.formats.paths import arrow_path, expand_home


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder of its own ($HOME, which expanduser reads) and a separate current directory."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return folder


def train_config(*args: str):
    """kto-train's TrainConfig for `args`, as main builds it (defaults < --config < flags), without running."""
    from kto.train.cli import config_from, main

    ctx = main.make_context("kto-train", list(args))
    params = dict(ctx.params)
    with ctx:
        return config_from(ctx, params.pop("config_file"), params)


def precompute_config(*args: str):
    """kto-precompute's PrecomputeConfig for `args`, as main builds it, without running."""
    from kto.precompute.cli import config_from, main

    ctx = main.make_context("kto-precompute", list(args))
    params = dict(ctx.params)
    with ctx:
        return config_from(ctx, params.pop("config_file"), params)


def test_expand_home_only_text_that_starts_with_a_tilde(home):
    assert expand_home("~/c") == f"{home}/c"
    assert expand_home("~") == str(home)
    assert expand_home("hf:~/data:train") == "hf:~/data:train"  # a spec, not a path
    assert expand_home("ORG/NAME") == "ORG/NAME"
    assert expand_home("./~/c") == "./~/c"
    assert expand_home(Path("~")) == Path("~")  # Path('./~') is Path('~'): a real folder, kept
    assert arrow_path(Path("~/shard.arrow")) == "./~/shard.arrow"
    assert arrow_path("/abs/shard.arrow") == "/abs/shard.arrow"


def test_python_api_values_expand(home):
    """The Python API's text (and so a config value that reaches a config as text) as the flags'."""
    assert typed("out", "~/cacheT", Path) == home / "cacheT"
    assert typed("data", ["~/a.jsonl", "hf:~/d:train"], tuple[Path, ...]) == (home / "a.jsonl", Path("hf:~/d:train"))
    assert typed("eval_cache", Path("~"), Path | None) == Path("~")


def test_train_flags_expand(home, tiny_cache, tiny_eval_cache, tiny_model_dir):
    shutil.copytree(tiny_cache, home / "c")
    shutil.copytree(tiny_eval_cache, home / "e")
    cfg = train_config("--cache", "~/c", "--eval-cache", "~/e", "--model", str(tiny_model_dir), "--out", "~/runX")
    assert (cfg.cache, cfg.eval_cache, cfg.out) == (home / "c", home / "e", home / "runX")
    cfg = train_config("--cache", "~/c", "--model", str(tiny_model_dir), "--out", "~/runX", "--resume", "~/runX/checkpoint-2")
    assert cfg.resume == home / "runX" / "checkpoint-2"


def test_train_config_file_expands(home, tiny_cache, tiny_model_dir):
    """--config '~/t.yaml' is found, and TRL's output_dir and our cache key there mean the home folder."""
    shutil.copytree(tiny_cache, home / "c")
    (home / "t.yaml").write_text(f"output_dir: ~/runs/kto\ncache: ~/c\nmodel_name_or_path: {tiny_model_dir}\n")
    cfg = train_config("--config", "~/t.yaml")
    assert (cfg.out, cfg.cache) == (home / "runs" / "kto", home / "c")
    assert not Path("~").exists()


def test_precompute_flags_and_file_expand(home, tiny_model_dir):
    write_rows(home / "rows.jsonl", text_rows())
    (home / "t.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (home / "p.yaml").write_text(f"data: ~/rows.jsonl\nout: ~/cacheT\nmodel: {tiny_model_dir}\n")
    cfg = precompute_config("--config", "~/p.yaml", "--chat-template", "~/t.jinja")
    assert (cfg.data, cfg.out, cfg.chat_template) == ((home / "rows.jsonl",), home / "cacheT", home / "t.jinja")
    cfg = precompute_config("--data", "~/rows.jsonl", "--eval-data", "~/rows.jsonl", "--model", str(tiny_model_dir), "--out", "~/cacheT")
    assert (cfg.data, cfg.eval_data, cfg.out) == ((home / "rows.jsonl",), (home / "rows.jsonl",), home / "cacheT")


def test_precompute_dataset_dir_expands(home, tiny_model_dir):
    write_rows(home / "rows.jsonl", text_rows())
    (home / "dataset_info.json").write_text(
        json.dumps({"mine": {"file_name": "rows.jsonl", "columns": {"prompt": "prompt", "response": "completion", "kto_tag": "label"}}})
    )
    cfg = precompute_config("--dataset", "mine", "--dataset-dir", "~", "--model", str(tiny_model_dir), "--out", "~/cacheT")
    assert cfg.data == (home / "rows.jsonl",)


def test_inspect_arguments_expand(home, tiny_cache):
    from kto.inspection.cli import main

    shutil.copytree(tiny_cache, home / "c")
    result = CliRunner().invoke(main, ["verify", "~/c"])
    assert result.exit_code == 0, result.output
    assert f"ok: {home / 'c'}" in result.output


def test_precompute_config_out_in_home_runs_there(home, tiny_model_dir):
    """The hunter's run: `out: ~/cacheT` in a config file made ./~/cacheT/{.lock,.journal} and died
    in pyarrow's staging write to $HOME/cacheT. The whole cache is now in the home folder."""
    from kto.precompute.cli import main

    data = write_rows(home / "rows.jsonl", text_rows())
    (home / "p.yaml").write_text("out: ~/cacheT\n")
    args = [*precompute_args(data, tiny_model_dir, Path("unused")), "--config", "~/p.yaml"]
    args[args.index("--out") : args.index("--out") + 2] = []
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (home / "cacheT" / "manifest.json").is_file()
    assert not Path("~").exists()


def test_a_folder_named_tilde_is_written_where_asked(home, tiny_model_dir):
    """`--out ./~/cache` with a real ./~ folder: click makes it Path('~/cache'), which pyarrow
    would have expanded into $HOME/cache; every file lands in ./~/cache and none in $HOME."""
    from kto.precompute.cli import main

    Path("~").mkdir()
    data = write_rows(Path("rows.jsonl"), text_rows())
    args = precompute_args(data, tiny_model_dir, Path("unused"))
    args[args.index("--out") + 1] = "./~/cache"  # str(Path("./~/cache")) would be ~/cache, the home folder's
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (Path("~") / "cache" / "manifest.json").is_file()
    assert sorted(os.listdir(home)) == []


def test_an_unknown_user_stays_as_written(home):
    """`~nosuchuser` names no home folder: kept as written (Path.expanduser would raise)."""
    assert expand_home("~nosuchuser-kto/x") == "~nosuchuser-kto/x"


def test_a_refusal_of_an_expanded_value_names_the_files_key(home, tmp_path):
    """The file wrote `~/afile`; the value in force is the expanded path. The refusal still names
    the file's key (it compared the written text with the expanded path, and said the flag)."""
    (home / "afile").write_text("not a folder")
    config = tmp_path / "t.yaml"
    config.write_text("output_dir: ~/afile\n")
    from kto.train.cli import main

    result = CliRunner().invoke(main, ["--config", str(config), "--cache", "c", "--model", "m"])
    assert result.exit_code == 2, result.output
    assert f"--config {config}: output_dir ~/afile (kto-train's --out)" in result.output, result.output
