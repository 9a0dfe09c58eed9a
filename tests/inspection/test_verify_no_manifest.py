"""kto-inspect verify on a folder without a manifest (a cache kto-precompute is writing, a run
directory, any folder) refuses as summary and rows do: exit 2, one line. It said "FAILED: …
1 problem(s)" with exit 1, as if a finished cache had failed its checks."""

import json

import pytest
from click.testing import CliRunner
from conftest import one_line_error

from kto.formats.lock import locked_dir
from kto.formats.shards import JOURNAL_DIR
from kto.inspection.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def same_refusal(folder) -> str:
    """verify's one line, asserted to be summary's and rows' with the command named alike."""
    said = one_line_error(invoke("verify", folder))
    for command in ("summary", "rows"):
        assert one_line_error(invoke(command, folder)) == said
    return said


def test_a_cache_being_written_is_refused_not_failed(tmp_path):
    cache = tmp_path / "cache"
    (cache / JOURNAL_DIR).mkdir(parents=True)
    (cache / "shard-00000.arrow").write_bytes(b"not yet")
    with locked_dir(cache, "--out"):
        said = same_refusal(cache)
    assert said.startswith(f"kto-inspect: error: {cache / 'manifest.json'}: no manifest yet: kto-precompute (pid ")
    assert said.endswith(f"is writing {cache} now; wait for it to finish")


@pytest.mark.parametrize("what", ["run", "empty", "dangling link", "folder named manifest.json"])
def test_a_folder_that_is_no_cache_is_refused_not_failed(tmp_path, what):
    """A dangling manifest.json link or a folder of that name is "no manifest" to summary and
    rows: verify says the same line with their exit code (it said it with exit 1)."""
    folder = tmp_path / what.replace(" ", "-")
    folder.mkdir()
    if what == "run":
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 0.5}) + "\n")
    elif what == "dangling link":
        (folder / "manifest.json").symlink_to(tmp_path / "nowhere")
    elif what == "folder named manifest.json":
        (folder / "manifest.json").mkdir()
    said = same_refusal(folder)
    assert said == f"kto-inspect: error: {folder / 'manifest.json'}: no manifest; is {folder} a finished kto-precompute cache?"


def test_an_unreadable_manifest_is_still_a_problem_found(tmp_path):
    """A manifest that is there but broken is what verify is for: exit 1, the problem on stderr."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text("{")
    result = invoke("verify", cache)
    assert result.exit_code == 1 and f"FAILED: {cache}: 1 problem(s), listed on stderr" in result.stdout
