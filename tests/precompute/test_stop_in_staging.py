"""A stop (Ctrl-C, SIGTERM: formats/signals.py `Stopped`) while rows are being staged.

The staging file is reused by any later run that finds it under its final name (pipeline.py
`stage_rows`), so it must appear there only once every row is in it: a stop part-way leaves no
staging file, and the rerun stages and caches every row."""

from __future__ import annotations

import signal

from conftest import chat_rows, precompute_args, write_rows
from conftest import run_precompute as run_cli

from kto.formats import schema as S
from kto.formats.manifest import read_manifest


def test_a_stop_while_staging_leaves_no_staging_file_and_the_rerun_caches_every_row(tmp_path, tiny_model_dir, monkeypatch):
    from kto.formats.signals import Stopped
    from kto.precompute import staging

    rows = chat_rows()
    data = write_rows(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "c"
    args = precompute_args(data, tiny_model_dir, out)
    monkeypatch.setattr(staging, "BLOCK", 4)  # 16 rows: four blocks, four record batches
    real_block, blocks = staging._tokenize_block, []

    def stopped_at_the_third_block(block, *a, **kw):
        blocks.append(len(block))
        if len(blocks) == 3:
            raise Stopped(signal.SIGINT)
        return real_block(block, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(staging, "_tokenize_block", stopped_at_the_third_block)
        result = run_cli(*args)
    assert result.exit_code == 128 + signal.SIGINT, result.output
    assert blocks == [4, 4, 4]  # two blocks were written before the stop
    assert not staging.staging_files(out), sorted(p.name for p in out.iterdir())
    assert not list(out.glob(".*.tmp-*")) and not (out / S.MANIFEST_NAME).exists()

    resumed = run_cli(*args)
    assert resumed.exit_code == 0, resumed.output
    manifest = read_manifest(out)
    assert manifest.counts.rows == len(rows)
    assert sum(s.rows for s in manifest.shards) == len(rows)
