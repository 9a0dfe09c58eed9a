"""Check that the environment of this process holds torch's CPU kernels to AVX2, before the
numerics tests run a second time under it (.ci/run). Exits 1, saying which library ignored it.

Three libraries pick their vector width at run time: ATen (ATEN_CPU_CAPABILITY), MKL
(MKL_ENABLE_INSTRUCTIONS) and oneDNN (ONEDNN_MAX_CPU_ISA). Each is asked in a child process,
once with this environment and once without the three variables, so the line printed says what
the CPU does natively and what the forced pass runs. On a CPU without AVX-512 the forced pass
runs the same kernels as the first one; that is said, not refused.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

FORCING = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")

# A matmul (MKL sgemm) and a convolution (oneDNN) with their verbose logs on.
PROBE = """
import torch
print("aten:" + torch.backends.cpu.get_cpu_capability())
a = torch.randn(64, 64); (a @ a).sum()
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.functional.conv2d(torch.randn(2, 8, 16, 16), torch.randn(8, 8, 3, 3)).sum()
"""

WIDE = re.compile(r"512|AVX10|AMX", re.IGNORECASE)


def probe(env: dict[str, str]) -> dict[str, str]:
    """{'aten': capability, 'mkl': MKL's instruction-set words, 'onednn': oneDNN's isa} in `env`."""
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, "MKL_VERBOSE": "1"}, capture_output=True, text=True, check=True).stdout
    aten = re.search(r"^aten:(\S+)", out, re.MULTILINE)
    mkl = re.search(r"MKL_VERBOSE .*? architecture (.*?) enabled processors", out) or re.search(r"MKL_VERBOSE .*? architecture (.*?),", out)
    onednn = re.search(r"onednn_verbose,.*?isa:([^\n]*)", out)
    return {
        "aten": aten.group(1) if aten else "?",
        "mkl": mkl.group(1).strip() if mkl else "not reported",
        "onednn": onednn.group(1).strip() if onednn else "not reported",
    }


def main() -> int:
    missing = [k for k in FORCING if k not in os.environ]
    if missing:
        print(f"check_isa: {', '.join(missing)} not set", file=sys.stderr)
        return 1
    native = probe({k: v for k, v in os.environ.items() if k not in FORCING})
    forced = probe(dict(os.environ))
    print(f"CPU kernels: native {native}; forced {forced}")
    wide = [lib for lib in ("mkl", "onednn") if WIDE.search(forced[lib])]
    if forced["aten"] != "AVX2" or wide:
        ignored = (["aten"] if forced["aten"] != "AVX2" else []) + wide
        print(f"check_isa: the AVX2 setting did not take effect for {', '.join(ignored)}: {forced}", file=sys.stderr)
        return 1
    if native["aten"] == "AVX2":
        print("This CPU has no AVX-512: the forced-AVX2 pass runs the same kernels as the first.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
