"""Reading users' raw data: only kto-precompute does, so it lives here and not in formats/.

- records.py: a file's bytes, hashed and parsed from those same bytes (JSONL, JSON, Parquet, CSV, Arrow);
- hub.py: `datasets` inputs (hub ids, local directories) and their identities in the fingerprint;
- sharegpt.py: LLaMA-Factory's ShareGPT shape;
- examples.py: every shape to `Example(id, prompt, completion, label)`, each row checked.
"""
