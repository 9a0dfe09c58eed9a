"""kto-inspect's one-line messages about paths: a command to copy and paste quotes its path
(one with a space, or non-UTF-8 bytes, broke the pasted command), and a --to that is a
symbolic link to nothing is said as kto-precompute and kto-train say it."""

from __future__ import annotations

import json
import os
import shlex
import shutil

import pytest
from click.testing import CliRunner

from kto.formats.cache import open_cache
from kto.formats.errors import InputError
from kto.inspection.cli import main
from kto.inspection.summary import render, summarize

ODD = "日本 é"


def test_the_summary_of_an_eval_split_quotes_its_path(tiny_cache):
    s = summarize(tiny_cache)
    s["eval_cache"] = f"cache {ODD}/eval"
    hint = render(s).split("(kto-inspect summary ", 1)[1].rsplit(")", 1)[0]
    assert shlex.split(hint) == [f"cache {ODD}/eval"]


@pytest.mark.parametrize("name", [f"cache {ODD}", os.fsdecode(b"cc\xfe")])
def test_the_verify_hint_quotes_the_cache(tiny_cache, tmp_path, name):
    cache = tmp_path / name
    shutil.copytree(tiny_cache, cache)
    (cache / open_cache(cache).manifest.shards[0].name).unlink()
    with pytest.raises(InputError) as err:
        open_cache(cache).check_sha256(0)
    hint = str(err.value).split("kto-inspect verify ", 1)[1].rsplit(" checks the whole cache", 1)[0]
    assert shlex.split(hint) == [str(cache)]


def test_a_report_folder_that_is_a_dangling_link_is_one_line(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    line = {"step": 1, "split": "train", "loss": 0.5, "kl": 0.0, "count/chosen": 1.0, "count/rejected": 1.0}
    (run / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    link = tmp_path / "report-link"
    link.symlink_to(tmp_path / "gone" / "report")
    result = CliRunner().invoke(main, ["run", str(run), "--to", str(link)])
    assert result.exit_code != 0
    assert f"--to {link}: a symbolic link to {tmp_path / 'gone' / 'report'}, which does not exist; create that directory" in result.output
    assert "File exists" not in result.output
