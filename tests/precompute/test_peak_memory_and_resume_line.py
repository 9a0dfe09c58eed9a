"""kto-precompute's last line gave the memory *at the end* as its peak (0.38 GB where sampled
RssAnon reached 0.55 GB), and a resumed run said nothing of what it kept. Now the peak is sampled
after every batch and shard, with the kernel's high-water mark beside it, and a resumed run says
what an earlier run left."""

from __future__ import annotations

import shutil

import pytest
from conftest import chat_rows, precompute_args, write_rows
from conftest import run_precompute as run_cli

from kto.formats import memory
from kto.formats import schema as S
from kto.formats.memory import GB, MemoryMeter, peak_words


@pytest.fixture
def fake_rss(monkeypatch):
    """rss_kinds and the high-water mark under the test's hand; no CUDA figure."""
    now = {"anon": 0.1 * GB}
    monkeypatch.setattr(memory, "rss_kinds", lambda: (now["anon"], 0.05 * GB))
    monkeypatch.setattr(memory, "max_rss_bytes", lambda: 9.0 * GB)
    monkeypatch.setattr(memory, "cuda_peak_gb", lambda: None)
    return now


def test_a_meter_fed_samples_reports_their_max_not_the_last(fake_rss):
    meter = MemoryMeter()
    for anon in (0.2, 0.55, 0.38):
        fake_rss["anon"] = anon * GB
        meter.sample()
    words = peak_words(meter, "sampled")
    assert words == "0.55 GB allocated (sampled), 9.00 GB resident at most (with the mapped model and shard files)"


def test_without_proc_only_the_high_water_mark_is_said(monkeypatch):
    monkeypatch.setattr(memory, "rss_kinds", lambda: (None, None))
    monkeypatch.setattr(memory, "max_rss_bytes", lambda: 1.5 * GB)
    monkeypatch.setattr(memory, "cuda_peak_gb", lambda: None)
    assert peak_words(MemoryMeter(), "sampled") == "1.50 GB resident at most (with the mapped model and shard files)"


def test_the_done_line_reports_a_peak_reached_while_scoring(tmp_path, tiny_model_dir, fake_rss, monkeypatch):
    """7 GB of anonymous memory only while score_sequences runs (its batches), 0.1 GB before and
    after: a figure read at the end said 0.10."""
    from kto.precompute import pipeline

    real = pipeline.score_sequences

    def scoring(*args, **kwargs):
        fake_rss["anon"] = 7.0 * GB
        try:
            return real(*args, **kwargs)
        finally:
            fake_rss["anon"] = 0.1 * GB

    monkeypatch.setattr(pipeline, "score_sequences", scoring)
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    result = run_cli(*precompute_args(data, tiny_model_dir, tmp_path / "c"))
    assert result.exit_code == 0, result.output
    done = [line for line in result.output.splitlines() if line.startswith("done in ")]
    assert len(done) == 1 and done[0].endswith(
        "peak memory 7.00 GB allocated (anonymous memory, sampled after every batch), 9.00 GB resident at most (with the mapped model and shard files)"
    ), result.output


def test_a_resumed_run_says_what_it_kept(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    first = run_cli(*precompute_args(data, tiny_model_dir, out))
    assert first.exit_code == 0 and "resuming" not in first.output, first.output
    shards = sorted(out.glob(S.SHARD_GLOB))
    assert len(shards) == 4  # 16 rows by 5: 5, 5, 5, 1
    (out / S.MANIFEST_NAME).unlink()  # as a kill before the manifest leaves it
    shards[1].unlink()
    shutil.rmtree(out / "tokenizer")
    again = run_cli(*precompute_args(data, tiny_model_dir, out))
    assert again.exit_code == 0, again.output
    assert "resuming: 3 of 4 train shards (11 rows) kept from an earlier run" in again.output.splitlines(), again.output
