"""Process memory, split into what the process allocated and what it merely maps from files.

The resident set size (ru_maxrss, VmHWM) counts the pages of memory-mapped files as well: the
cache's shards and the model's safetensors. Those pages belong to the page cache, the kernel
drops them under pressure, and they grow with the size of the cache, not with what the process
needs. So the figure that answers "how much memory does this need" is the *anonymous* memory
(heap, tensors, Python objects: `RssAnon` in /proc/self/status), and mapped file pages
(`RssFile`) are reported beside it, never added to it.

Linux gives only the current values of both, so peaks are sampled. kto-train polls: a daemon
thread (`MemoryMeter.polling`) reads /proc/self/status every `POLL_S` while the run trains, so the
top of a forward or backward pass inside a step is seen (sampling once per step, after the update,
saw memory the step had already freed: 0.57 GB reported where the step reached 2.18 GB). A read
is one pread (3.4 µs), but each wake-up takes the GIL from the main thread: on a tiny model whose
steps are Python-bound (~33 ms) on a loaded 2-core machine, polling every 20 ms cost ~1 % of step
time (paired median; 2 % of the main thread's CPU), every 5 ms 3.5-7 %, every 1 ms 18 %, every
50 ms nothing measurable; the test suite's training modules took 5 % longer at 20 ms and no
longer at 50 ms. So `POLL_S` is 50 ms: the peaks of a step (the end of the forward, the LM head's
chunks, the start of the backward) last longer than that on any model large enough for its
memory to matter.
`take_window()` at every log line gives the window's peaks. kto-precompute samples after
every scoring batch and shard (`peak_words`). The kernel's high-water mark (VmHWM) is exact but
counts the mapped files' pages too (and resetting it, /proc/self/clear_refs, resets it for the
whole process), so it is given beside the sampled figure in the last lines (`max_rss_bytes`),
not instead of it. On CUDA the device figure that matters is `torch.cuda.max_memory_allocated`,
kept as `peak_memory_gb` there.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

GB = 1e9
STATUS = "/proc/self/status"
POLL_S = 0.05
"""How often `MemoryMeter.polling` reads the memory (see above): a transient shorter can slip by."""
POLLED = f"anonymous memory, polled every {POLL_S * 1000:g} ms"
"""What kto-train's last line says of its sampled peak (`peak_words`)."""


def rss_kinds(fd: int | None = None) -> tuple[float | None, float | None]:
    """(anonymous, file-backed) resident bytes of this process now; None where unknown.

    `fd`: /proc/self/status held open (`MemoryMeter.polling`'s): one pread at offset 0, which
    the kernel answers afresh, instead of an open, a read and a close (3.4 against 15 µs)."""
    try:
        if fd is not None:
            text = os.pread(fd, 16384, 0)
        else:
            with open(STATUS, "rb") as f:
                text = f.read()
    except OSError:
        return None, None
    return _kib_after(text, b"\nRssAnon:"), _kib_after(text, b"\nRssFile:")


def _kib_after(text: bytes, key: bytes) -> float | None:
    """The bytes of /proc status's `key:   N kB` line ("kB" in /proc means KiB), None without it."""
    at = text.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = text.find(b"\n", start)
    words = text[start : end if end >= 0 else len(text)].split()
    return float(words[0]) * 1024 if words else None


def max_rss_bytes() -> float:
    """Peak resident set size (anonymous + file pages) of this process's life: the kernel's
    high-water mark (VmHWM on Linux), so no peak between two samples escapes it."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss) if sys.platform == "darwin" else float(rss) * 1024  # bytes on macOS, KiB on Linux


def cuda_peak_gb() -> float | None:
    """torch.cuda.max_memory_allocated in GB, or None without CUDA (torch is not imported for it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / GB
    return None


def peak_memory_gb() -> float:
    """One figure for a log line: CUDA peak allocated on GPU, else peak anonymous memory seen so
    far (this call samples once; a `MemoryMeter` that samples every step sees more peaks)."""
    cuda = cuda_peak_gb()
    if cuda is not None:
        return cuda
    anon, _ = rss_kinds()
    return anon / GB if anon is not None else max_rss_bytes() / GB


@dataclass
class MemoryMeter:
    """Peaks of anonymous and file-backed resident memory, over the process and over a window.

    `sample()` reads once; `polling()` samples on a thread while its block runs. A sample is
    recorded, and a window taken and reset (`take_window`), under a lock: neither undoes the
    other half-way."""

    peak_anon: float = 0.0
    window_anon: float = 0.0
    window_file: float = 0.0
    known: bool = field(default=True)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def sample(self, fd: int | None = None) -> None:
        """Read the memory once (`fd`: /proc/self/status held open, see `rss_kinds`)."""
        anon, file = rss_kinds() if fd is None else rss_kinds(fd)
        with self.lock:
            if anon is None:
                self.known = False
                return
            self.peak_anon = max(self.peak_anon, anon)
            self.window_anon = max(self.window_anon, anon)
            self.window_file = max(self.window_file, file or 0.0)

    @contextlib.contextmanager
    def polling(self, every: float = POLL_S) -> Iterator[None]:
        """Sample every `every` seconds on a daemon thread while the block runs; the thread has
        ended when the block exits, whether it returns or raises. Without /proc it reads once.

        The thread holds /proc/self/status open and reads it with one pread: each system call
        gives the GIL up and takes it back, and each taking back may wait on the main thread."""
        stop = threading.Event()
        self.sample()
        try:
            fd = os.open(STATUS, os.O_RDONLY) if self.known else None
        except OSError:
            fd = None

        def poll() -> None:
            while fd is not None and self.known and not stop.wait(every):
                self.sample(fd)

        thread = threading.Thread(target=poll, name="kto-memory-meter", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if fd is not None:
                os.close(fd)

    def take_window(self) -> dict[str, float | None]:
        """Metrics for a log line, then start a new window.

        peak_memory_gb: CUDA max_memory_allocated on GPU, else the process's peak anonymous memory;
        rss_anon_gb / rss_file_gb: peaks within the window of anonymous and of mapped-file pages.
        """
        self.sample()
        cuda = cuda_peak_gb()
        with self.lock:
            if self.known:
                out = {"rss_anon_gb": self.window_anon / GB, "rss_file_gb": self.window_file / GB}
                peak = self.peak_anon / GB
            else:  # no /proc (not Linux): the lifetime RSS peak is all there is
                out = {"rss_anon_gb": None, "rss_file_gb": None}
                peak = max_rss_bytes() / GB
            self.window_anon = self.window_file = 0.0
        return {"peak_memory_gb": cuda if cuda is not None else peak, **out}


def peak_words(meter: MemoryMeter, sampled: str) -> str:
    """The peaks of a run in words, for a command's last line: what a memory request is sized
    from. CUDA's max_memory_allocated first where there is one; then the host's peak anonymous
    memory as `meter` sampled it (`sampled` says how often), and the kernel's high-water mark of
    the resident set, which also counts the mapped model and shard files' pages (an upper bound
    that no sample can miss). Off Linux the high-water mark alone."""
    meter.sample()
    resident = f"{max_rss_bytes() / GB:.2f} GB resident at most (with the mapped model and shard files)"
    host = f"{meter.peak_anon / GB:.2f} GB allocated ({sampled}), {resident}" if meter.known else resident
    cuda = cuda_peak_gb()
    return host if cuda is None else f"{cuda:.2f} GB on the GPU (max allocated); host: {host}"
