"""A shard the write journal recorded under another layout (rows_per_shard, batch_tokens, ...)
is not this configuration's shard, even with the same fingerprint: a resumed kto-precompute
refuses the directory instead of reusing it (its row boundaries are another layout's)."""

import json
import shutil

from click.testing import CliRunner
from conftest import chat_rows, one_line_error, precompute_args, write_rows

from kto.formats.shards import Journal


def test_recorded_sha_needs_the_same_fingerprint_and_layout(tmp_path):
    from kto.formats.shards import sha256_file

    journal = Journal(tmp_path)
    layout = {"rows_per_shard": 5, "batch_tokens": 256, "num_processes": 1, "prefix_sharing": True}
    shard = tmp_path / "shard-00000.arrow"
    shard.write_bytes(b"shard bytes")
    sha = sha256_file(shard)
    journal.dir.mkdir(parents=True)
    record = {"fingerprint": "f" * 64, "layout": layout, "rows": 5, "sha256": sha}
    (journal.dir / "shard-00000.arrow.json").write_text(json.dumps(record))
    assert journal.recorded_sha(shard.name, "f" * 64, layout) == sha
    assert journal.is_done(shard.name, "f" * 64, layout)
    other = {**layout, "rows_per_shard": 4}
    assert journal.recorded_sha(shard.name, "f" * 64, other) is None
    assert not journal.is_done(shard.name, "f" * 64, other)
    assert journal.recorded_sha(shard.name, "e" * 64, layout) is None


def test_a_rerun_refuses_a_shard_recorded_under_another_layout(tmp_path, tiny_model_dir):
    from kto.precompute.cli import main

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "cache"
    args = precompute_args(data, tiny_model_dir, out)
    assert CliRunner().invoke(main, args).exit_code == 0
    (out / "manifest.json").unlink()  # as if killed before the manifest: a rerun resumes
    entry_path = out / ".journal" / "shard-00001.arrow.json"
    entry = json.loads(entry_path.read_text())
    entry["layout"] = {**entry["layout"], "rows_per_shard": entry["layout"]["rows_per_shard"] + 1}
    entry_path.write_text(json.dumps(entry))
    before = (out / "shard-00001.arrow").read_bytes()
    line = one_line_error(CliRunner().invoke(main, args))
    assert "holds shards of a different configuration (shard-00001.arrow)" in line, line
    assert not (out / "manifest.json").exists()
    assert (out / "shard-00001.arrow").read_bytes() == before
    shutil.rmtree(out)
