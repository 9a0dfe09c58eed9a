"""Reading users' raw data: only kto-precompute does, so it lives here and not in formats/.

- records.py: each input read (a file's bytes, hashed and parsed from those same bytes: JSONL,
  JSON, Parquet, CSV, Arrow; or a `datasets` source) and each record sent to its shape;
- hub.py: `datasets` inputs (hub ids, local directories) and their identities in the fingerprint;
- sharegpt.py: LLaMA-Factory's ShareGPT shape;
- alpaca.py: LLaMA-Factory's alpaca shape (rows of a --dataset entry of that formatting);
- dataset_info.py: --dataset NAME --dataset-dir DIR, a dataset_info.json entry read completely;
- examples.py: `Example(id, prompt, completion, label)`, the one checked row, the label rule, the
  column maps and the TRL / LLaMA-Factory shapes (the module the others build on).
"""
