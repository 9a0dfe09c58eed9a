"""Process memory, split into what the process allocated and what it merely maps from files.

The resident set size (ru_maxrss, VmHWM) counts the pages of memory-mapped files as well: the
cache's shards and the model's safetensors. Those pages belong to the page cache, the kernel
drops them under pressure, and they grow with the size of the cache, not with what the process
needs. So the figure that answers "how much memory does this need" is the *anonymous* memory
(heap, tensors, Python objects: `RssAnon` in /proc/self/status), and mapped file pages
(`RssFile`) are reported beside it, never added to it.

Linux gives only the current values of both, so peaks are sampled: `MemoryMeter.sample()` at
every step and `take_window()` at every log line (kto-train), or after every scoring batch and
shard (kto-precompute, `peak_words`). A sample sees the memory between batches, not the top of a
forward pass inside one, so kto-precompute's line gives the kernel's high-water mark beside it
(`max_rss_bytes`: exact, and counting the mapped files too). On CUDA the device figure that
matters is `torch.cuda.max_memory_allocated`, kept as `peak_memory_gb` there.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass, field

GB = 1e9
STATUS = "/proc/self/status"


def rss_kinds() -> tuple[float | None, float | None]:
    """(anonymous, file-backed) resident bytes of this process now; None where unknown."""
    try:
        with open(STATUS, "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None, None
    found = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            found[key] = float(rest.split()[0]) * 1024  # "kB" in /proc means KiB
    return found.get("RssAnon"), found.get("RssFile")


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
    """Peaks of anonymous and file-backed resident memory, over the process and over a window."""

    peak_anon: float = 0.0
    window_anon: float = 0.0
    window_file: float = 0.0
    known: bool = field(default=True)

    def sample(self) -> None:
        anon, file = rss_kinds()
        if anon is None:
            self.known = False
            return
        self.peak_anon = max(self.peak_anon, anon)
        self.window_anon = max(self.window_anon, anon)
        self.window_file = max(self.window_file, file or 0.0)

    def take_window(self) -> dict[str, float | None]:
        """Metrics for a log line, then start a new window.

        peak_memory_gb: CUDA max_memory_allocated on GPU, else the process's peak anonymous memory;
        rss_anon_gb / rss_file_gb: peaks within the window of anonymous and of mapped-file pages.
        """
        self.sample()
        cuda = cuda_peak_gb()
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
