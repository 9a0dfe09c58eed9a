"""How the numbers in a cache are produced: the torch (and transformers) half of the contract.

formats/ defines what a cache is on disk and imports neither torch nor transformers, so that
kto-inspect's readers, `kto.formats.scan` and the cache reader start fast and work without a
GPU stack (tests/test_boundaries.py checks it). What defines the *numbers* lives here, shared by
kto-precompute (reference), kto-train (policy) and `kto-inspect score`, because precompute/ and
train/ never import each other:

- logprob.py: the one definition of a completion log-prob (and its chunked per-token head);
- scoring.py, shared_prefix.py: scoring many sequences in token-budget
  batches (optionally prompt-sharing packs);
- sources.py: what --model names (a folder, a .gguf file, a hub id) and the refusals of a folder
  that would load another model; sharded.py: kto-train's FSDP (DCP) checkpoints;
- loading.py: loading a tokenizer and a model, and the one model-loading sequence, with
  load_options.py (--attn-implementation, --device-map), meta_device.py (the model built on the
  meta device for the checks before --out), weights_check.py (the weight files against
  config.json), safetensors_headers.py (tensor names and offsets, read without loading) and
  library_bars.py (transformers' progress bars kept out of logs);
- identity.py: the model's and tokenizer's identities in the fingerprint; tokenizer_check.py:
  --model's tokenizer against a cache's;
- adapters.py: reading a LoRA adapter directory (kto-train's resume, kto-inspect score);
- numerics.py: the dtype table (names, weights and autocast), and the width every forward pads to.
"""
