"""peft's import brings bitsandbytes, whose CPU backend logged at import that it could not load an
optional kernel package from the hub: a plain LoRA run printed a failure that was none."""

import subprocess
import sys


def test_importing_peft_for_lora_logs_no_bitsandbytes_kernel_failure():
    code = "from kto.formats.compute.adapters import require_peft; require_peft(); print('imported')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "imported", proc.stderr[-2000:]
    assert "Failed to load" not in proc.stderr and "kernels-community" not in proc.stderr, proc.stderr[-2000:]
