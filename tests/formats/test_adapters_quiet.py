"""peft's import brings bitsandbytes, whose CPU backend logged at import that it could not load an
optional kernel package from the hub: a plain LoRA run printed a failure that was none."""

import subprocess
import sys


def test_importing_peft_for_lora_logs_no_bitsandbytes_kernel_failure():
    code = "from kto.formats.compute.adapters import require_peft; require_peft(); print('imported')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "imported", proc.stderr[-2000:]
    assert "Failed to load" not in proc.stderr and "kernels-community" not in proc.stderr, proc.stderr[-2000:]


def test_loading_adapters_for_scoring_warns_nothing(tiny_model_dir, tmp_path):
    """kto-inspect score and --merge-adapters load a run's adapters through with_adapters: the
    same FutureWarning of peft's, printed on every such load."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kto.formats.compute.adapters import with_adapters

    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_adapters(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "a")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)], [str(w.message) for w in caught]
