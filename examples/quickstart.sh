#!/usr/bin/env bash
# End to end on a real model (SmolLM2-135M-Instruct) and the shipped feedback data, on CPU:
# precompute the reference once, train only the policy, reload the result, look inside.
set -euo pipefail
DEMO=${DEMO:-demo}
python examples/smollm2_to_hf.py "$DEMO/smollm2"

kto-precompute --data examples/feedback.jsonl --model "$DEMO/smollm2" --out "$DEMO/cache" \
  --max-length 256 --eval-fraction 0.2 --batch-tokens 4096

rm -rf "$DEMO/run"  # a rerun of the quickstart starts a fresh run (kto-train refuses to mix runs)
kto-train --cache "$DEMO/cache" --model "$DEMO/smollm2" --out "$DEMO/run" \
  --batch-size 4 --grad-accum 2 --max-steps 10 --lr 5e-6 --auto-weights \
  --eval-cache "$DEMO/cache/eval" --eval-every 5 --log-every 2

# The same cache, LoRA adapters instead of a full fine-tune (a few steps: final/ is a PEFT adapter
# dir, final-merged/ the base with the adapters merged in).
rm -rf "$DEMO/run-lora"
kto-train --cache "$DEMO/cache" --model "$DEMO/smollm2" --out "$DEMO/run-lora" \
  --lora-r 16 --lora-alpha 32 --batch-size 4 --max-steps 4 --lr 5e-4 --auto-weights --log-every 2 --merge-adapters

kto-inspect verify "$DEMO/cache"
kto-inspect summary "$DEMO/cache"
kto-inspect rows "$DEMO/cache" --where "label = false" --sort ref_logp --limit 2
kto-inspect run "$DEMO/run"
kto-inspect score "$DEMO/cache/eval" --model "$DEMO/run/final" --out "$DEMO/eval_scores.parquet"
kto-inspect score "$DEMO/cache/eval" --model "$DEMO/run-lora/final" --out "$DEMO/eval_scores_lora.parquet"

python - "$DEMO" <<'PY'
import sys
import polars as pl
from transformers import AutoModelForCausalLM, AutoTokenizer

demo = sys.argv[1]
cache = pl.scan_ipc(f"{demo}/cache/shard-*.arrow")
print(cache.group_by("label").agg(pl.len().alias("rows"), pl.col("ref_logp").mean().alias("mean_ref_logp")).sort("label").collect())
# infer_schema_length=None: a metric can be null (no undesirable row in the window) for more
# than the 100 lines polars types a column from by default.
metrics = pl.read_ndjson(f"{demo}/run/metrics.jsonl", infer_schema_length=None)
print(metrics.select("step", "split", "loss", "kl", "rewards/margins"))
print(pl.read_ndjson(f"{demo}/run-lora/metrics.jsonl", infer_schema_length=None).select("step", "loss", "kl", "rewards/chosen", "rewards/margins"))
tok = AutoTokenizer.from_pretrained(f"{demo}/run/final")
model = AutoModelForCausalLM.from_pretrained(f"{demo}/run/final")
prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Japan?"}], tokenize=False, add_generation_prompt=True)
ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
out = model.generate(**ids, max_new_tokens=20, do_sample=False)
print("final/ reloads and answers:", repr(tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)))
PY
