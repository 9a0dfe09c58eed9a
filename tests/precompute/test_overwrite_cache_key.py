"""`overwrite_cache: true` (every LLaMA-Factory example file holds it) is kto-precompute's
--overwrite: a rerun of the same file keeps the finished cache as it is (the same shard files, not
scored again), and a rerun after an edit replaces the cache instead of being refused with
"pass --overwrite"."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner
from conftest import text_rows, write_rows

from kto.formats.manifest import read_manifest
from kto.precompute.cli import main


def test_overwrite_cache_keeps_the_same_configuration_and_replaces_another(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    cache, config = tmp_path / "cache", tmp_path / "lf.yaml"
    text = f"model_name_or_path: {tiny_model_dir}\ndata: {data}\ncutoff_len: 64\noverwrite_cache: true\ncache: {cache}\nrows_per_shard: 5\n"
    config.write_text(text)
    first = CliRunner().invoke(main, ["--config", str(config)], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    note = f"kto-precompute: --config {config}: overwrite_cache: true -> overwrite: a cache of another configuration in the cache directory is replaced"
    assert note in first.output
    shards = sorted(cache.glob("shard-*.arrow"))
    before = {p.name: (os.stat(p).st_ino, p.read_bytes()) for p in shards}
    again = CliRunner().invoke(main, ["--config", str(config)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert {p.name: (os.stat(p).st_ino, p.read_bytes()) for p in sorted(cache.glob("shard-*.arrow"))} == before  # kept, not scored again
    config.write_text(text.replace("cutoff_len: 64", "cutoff_len: 48"))
    edited = CliRunner().invoke(main, ["--config", str(config)], catch_exceptions=False)
    assert edited.exit_code == 0, edited.output  # was: "holds the cache of a different configuration ... pass --overwrite"
    assert read_manifest(cache).content.max_length == 48
    assert json.loads((cache / "manifest.json").read_text())["content"]["max_length"] == 48
