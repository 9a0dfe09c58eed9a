"""peak_memory_gb used to be the resident set size, which counts memory-mapped shard pages and so
grew with the cache. Anonymous memory (what the process allocated) is now reported apart from
mapped file pages; both trainer and precompute use this one module."""

import mmap
import sys

import pytest

from kto.formats.memory import MemoryMeter, peak_memory_gb, rss_kinds

MB = 1 << 20

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def test_mapped_file_pages_count_as_file_memory_not_allocated_memory(tmp_path):
    path = tmp_path / "shard.bin"
    path.write_bytes(b"\1" * (96 * MB))
    meter = MemoryMeter()
    meter.take_window()
    before = peak_memory_gb()
    anon0, file0 = rss_kinds()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        touched = sum(m[i] for i in range(0, len(m), 4096))  # fault every page in
        meter.sample()
        window = meter.take_window()
        during = peak_memory_gb()
    assert touched == 96 * MB // 4096
    assert window["rss_file_gb"] >= (file0 + 90 * MB) / 1e9
    assert window["rss_anon_gb"] < (anon0 + 32 * MB) / 1e9
    assert during - before < 32 * MB / 1e9  # the 96 MB mapping is not allocated memory


def test_allocated_memory_is_anonymous_and_the_window_peak_is_kept():
    meter = MemoryMeter()
    anon0, _ = rss_kinds()
    # A fresh anonymous mapping, not a bytearray: malloc may hand back pages an earlier test
    # freed but kept resident (already in anon0), and the RSS would then not grow at all.
    block = mmap.mmap(-1, 128 * MB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: RssAnon, not RssShmem
    block[::4096] = b"\1" * len(block[::4096])  # the kernel commits each page on its first write
    meter.sample()
    block.close()
    window = meter.take_window()  # samples again after the free: the peak stays
    assert window["rss_anon_gb"] >= anon0 / 1e9 + 120 * MB / 1e9
    assert window["peak_memory_gb"] >= window["rss_anon_gb"]
    assert meter.take_window()["rss_anon_gb"] < window["rss_anon_gb"]  # a new window starts low


def test_precompute_reports_through_this_module():
    from kto.formats.memory import peak_words
    from kto.precompute import pipeline

    assert pipeline.MemoryMeter is MemoryMeter and pipeline.peak_words is peak_words
