"""kto-train's CPU memory figures missed the step's real peak: the meter sampled once per step,
after the optimizer update, when the activations and the LM head's scratch were already freed
(a hunter polled 2.16 GB of anonymous memory where metrics.jsonl said 0.57). The meter now polls
on a thread while the run trains, and kto-train's last line gives the peaks in words, as
kto-precompute's does.

A step here holds a known transient buffer (256 MB, fresh anonymous pages) inside
forward_backward and frees it before the step ends; it waits, without any clock in the
assertions, until the meter has read the memory twice while the buffer is held."""

from __future__ import annotations

import mmap
import sys
import threading
import time

import pytest
from conftest import metrics, run_train

from kto.formats import memory
from kto.formats.memory import GB, MemoryMeter

MB = 1 << 20
BUFFER = 256 * MB

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


class CountingReads:
    """rss_kinds, counting its calls: a step can wait until the meter has read memory again."""

    def __init__(self, real):
        self.real, self.calls, self.changed = real, 0, threading.Condition()

    def __call__(self, *args):
        found = self.real(*args)
        with self.changed:
            self.calls += 1
            self.changed.notify_all()
        return found

    def wait_for(self, calls: int) -> bool:
        """True once `calls` reads happened; False if none came in 20 s (then the buffer is
        freed and the figures below fail on their values: no sample ever saw it)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.calls >= calls, timeout=20)


def hold_buffer(reads: CountingReads) -> float:
    """A transient allocation: BUFFER bytes of fresh anonymous pages, touched, held until the meter
    has read memory twice, then freed. Returns the anonymous memory just before it."""
    before, _ = memory.rss_kinds.real()
    block = mmap.mmap(-1, BUFFER, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # RssAnon, not malloc's reuse
    try:
        block[::4096] = b"\1" * len(block[::4096])  # the kernel commits each page on its first write
        reads.wait_for(reads.calls + 2)
    finally:
        block.close()
    return before


@pytest.fixture
def counting_reads(monkeypatch) -> CountingReads:
    reads = CountingReads(memory.rss_kinds)
    monkeypatch.setattr(memory, "rss_kinds", reads)
    return reads


def test_the_steps_transient_peak_is_in_metrics_and_the_last_line(tiny_cache, tiny_model_dir, tmp_path, monkeypatch, counting_reads):
    from kto.train import loop

    real, baselines = loop.forward_backward, []

    def forward_backward(*args, **kwargs):
        stats = real(*args, **kwargs)
        baselines.append(hold_buffer(counting_reads))  # inside the step, freed before it ends
        return stats

    monkeypatch.setattr(loop, "forward_backward", forward_backward)
    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, "--batch-size", "2", "--lr", "1e-6", "--max-steps", "2", "--log-every", "1")
    assert result.exit_code == 0, result.output
    lines = [m for m in metrics(out) if m.get("split", "train") == "train"]
    assert len(lines) == 2 and len(baselines) == 2
    for line, before in zip(lines, baselines, strict=True):
        assert line["rss_anon_gb"] >= (before + BUFFER) / GB  # the window's peak saw the buffer
        assert line["peak_memory_gb"] >= (before + BUFFER) / GB
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("kto-train: done at step 2, peak memory "), result.output
    assert last.endswith("GB resident at most (with the mapped model and shard files)"), last
    allocated = float(last.removeprefix("kto-train: done at step 2, peak memory ").split(" GB allocated (anonymous memory, polled every ")[0])
    assert allocated >= round((max(baselines) + BUFFER) / GB, 2) - 0.01


def test_the_meter_polls_only_while_asked_and_keeps_the_window_peak(counting_reads):
    meter = MemoryMeter()
    before_threads = set(threading.enumerate())
    with meter.polling():
        before = hold_buffer(counting_reads)
        window = meter.take_window()
    after = counting_reads.calls
    assert not [t for t in threading.enumerate() if t not in before_threads and t.is_alive()]
    time.sleep(0.1)  # not asserted on: five polls' worth of time, in which a leftover thread would read
    assert counting_reads.calls == after
    assert window["rss_anon_gb"] >= (before + BUFFER) / GB and window["peak_memory_gb"] >= (before + BUFFER) / GB
    assert meter.take_window()["rss_anon_gb"] < window["rss_anon_gb"]  # a new window starts low
