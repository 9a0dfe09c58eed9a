"""How the numbers in a cache are produced: the torch (and transformers) half of the contract.

formats/ defines what a cache is on disk and imports neither torch nor transformers, so that
kto-inspect's readers, `kto.formats.scan` and the cache reader start fast and work without a
GPU stack (tests/test_boundaries.py checks it). What defines the *numbers* lives here, shared by
kto-precompute (reference), kto-train (policy) and `kto-inspect score`, because precompute/ and
train/ never import each other:

- logprob.py: the one definition of a completion log-prob (and its chunked per-token head);
- scoring.py, shared_prefix.py: scoring many sequences in token-budget
  batches (optionally prompt-sharing packs);
- models.py: loading a model and tokenizer, and their identities in the fingerprint;
- adapters.py: reading a LoRA adapter directory (kto-train's resume, kto-inspect score);
- numerics.py: the dtype table (names, weights and autocast), and the width every forward pads to.
"""
