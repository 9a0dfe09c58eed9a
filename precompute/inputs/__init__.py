"""Reading users' raw data: only kto-precompute does, so it lives here and not in formats/.

- records.py: a file's bytes, hashed and parsed from those same bytes (JSONL, JSON, Parquet, CSV, Arrow);
- hub.py: `datasets` inputs (hub ids, local directories) and their identities in the fingerprint;
- sharegpt.py: LLaMA-Factory's ShareGPT shape;
- alpaca.py: LLaMA-Factory's alpaca shape (rows of a --dataset entry of that formatting);
- dataset_info.py: --dataset NAME --dataset-dir DIR, a dataset_info.json entry read completely;
- example.py: `Example(id, prompt, completion, label)`, the one checked row, and the label rule;
- examples.py: every shape to Examples, each row checked.
"""
