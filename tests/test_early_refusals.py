"""A bad path on the command line is refused before torch and transformers are imported.

Their import costs seconds (formats/compute/early_checks.py); a typo, a FIFO or a link to
/dev/zero must not wait for it. Each command runs in a subprocess in which `import torch` and
`import transformers` fail (None in sys.modules), so the property fails loudly (a traceback, not
the one line) if a refusal comes after those imports. The messages are the ones the commands
gave before (tests/formats/test_regular_files.py pins the same lines through the full runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKED = "import sys; sys.modules.update(torch=None, transformers=None); sys.argv[0] = 'kto'; from {} import main; main()"


def refused(module: str, *args: str | Path) -> str:
    """The one stderr line of `python -m module args` run without torch and transformers."""
    code = BLOCKED.format(module)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_the_blocker_blocks():
    """The property can fail: a command that does import torch is not refused in one line."""
    proc = subprocess.run([sys.executable, "-c", BLOCKED.format("kto.formats.compute.logprob")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "import of torch halted" in proc.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_precompute_data_fifo(tmp_path, model_dir):
    data = tmp_path / "rows.jsonl"
    os.mkfifo(data)
    line = refused("kto.precompute.cli", "--data", data, "--model", model_dir, "--out", tmp_path / "out")
    assert line == f"kto-precompute: error: --data {data}: a FIFO, not a regular file; write the rows to a file and give its path"
    assert not (tmp_path / "out").exists()


def test_precompute_data_link_to_dev_zero(tmp_path, model_dir):
    data = tmp_path / "rows.jsonl"
    data.symlink_to("/dev/zero")
    line = refused("kto.precompute.cli", "--data", data, "--model", model_dir, "--out", tmp_path / "out")
    assert line == f"kto-precompute: error: --data {data}: a character device, not a regular file"


def test_precompute_missing_data_after_a_good_one(tmp_path, model_dir):
    good, missing = tmp_path / "a.jsonl", tmp_path / "absent.jsonl"
    good.write_text('{"prompt": "p", "completion": "c", "label": true}\n')
    line = refused("kto.precompute.cli", "--data", good, "--data", missing, "--model", model_dir, "--out", tmp_path / "out")
    assert line == f"kto-precompute: error: --data {missing}: no such file"


def test_precompute_dataset_directory_holding_a_fifo(tmp_path, model_dir):
    folder = tmp_path / "set"
    folder.mkdir()
    os.mkfifo(folder / "b.jsonl")
    line = refused("kto.precompute.cli", "--data", f"hf:{folder}:train", "--model", model_dir, "--out", tmp_path / "out")
    assert line == f"kto-precompute: error: --data {folder}: {folder / 'b.jsonl'}: a FIFO, not a regular file"


def test_precompute_model_typo_comes_first(tmp_path):
    """The run checks --model before the inputs; so does the early check."""
    line = refused("kto.precompute.cli", "--data", tmp_path / "absent.jsonl", "--model", tmp_path / "modle", "--out", tmp_path / "out")
    assert line == f"kto-precompute: error: --model {tmp_path / 'modle'}: no such file or directory"


def test_precompute_model_directory_without_config(tmp_path):
    (tmp_path / "model").mkdir()
    line = refused("kto.precompute.cli", "--data", tmp_path / "a.jsonl", "--model", tmp_path / "model", "--out", tmp_path / "out")
    assert line == f"kto-precompute: error: --model {tmp_path / 'model'}: directory has no config.json"


def test_a_lora_adapter_folder_as_model_says_to_merge_it(tmp_path):
    """LLaMA-Factory's and TRL's SFT runs save adapter folders; "no config.json" left a switching
    user guessing. kto-train loads --model through the same resolve_source."""
    adapter = tmp_path / "sft-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "peft_type": "LORA"}')
    line = refused("kto.precompute.cli", "--data", tmp_path / "a.jsonl", "--model", adapter, "--out", tmp_path / "out")
    said = f"--model {adapter}: a LoRA adapter folder (adapter_config.json), not a model; merge it into HuggingFaceTB/SmolLM2-135M-Instruct first"
    assert line.startswith(f"kto-precompute: error: {said}"), line
    from kto.formats.compute.sources import resolve_source
    from kto.formats.errors import InputError

    with pytest.raises(InputError, match="a LoRA adapter folder"):
        resolve_source(str(adapter))


def test_a_model_folder_that_also_holds_an_adapter_is_refused(tmp_path, model_dir):
    """transformers loads such a folder as the adapter on top of its base_model_name_or_path
    (resolved from the working directory), not the folder's own weights: kto-precompute scored
    another model than the manifest fingerprints (up to 2.1 nats a row), and kto-train ended in
    a peft traceback. kto-train and kto-inspect score resolve --model through the same function."""
    (model_dir / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny", "peft_type": "LORA"}')
    line = refused("kto.precompute.cli", "--data", tmp_path / "a.jsonl", "--model", model_dir, "--out", tmp_path / "out")
    assert line.startswith(f"kto-precompute: error: --model {model_dir}: holds a model (config.json) and a LoRA adapter (adapter_config.json)"), line
    assert "transformers would load the adapter on tiny, not this folder's weights" in line, line
    assert not (tmp_path / "out").exists()


def test_precompute_chat_template_link_to_dev_zero(tmp_path, model_dir):
    template = tmp_path / "template.jinja"
    template.symlink_to("/dev/zero")
    args = ("--data", tmp_path / "a.jsonl", "--model", model_dir, "--out", tmp_path / "out", "--chat-template", template)
    assert refused("kto.precompute.cli", *args) == f"kto-precompute: error: --chat-template {template}: a character device, not a regular file"


def test_train_missing_cache(tmp_path, model_dir):
    line = refused("kto.train.cli", "--cache", tmp_path / "cache", "--model", model_dir, "--out", tmp_path / "run")
    assert line == f"kto-train: error: {tmp_path / 'cache'}: no such cache directory"
    assert not (tmp_path / "run").exists()


def test_train_cache_without_manifest(tmp_path, model_dir):
    (tmp_path / "cache").mkdir()
    line = refused("kto.train.cli", "--cache", tmp_path / "cache", "--model", model_dir, "--out", tmp_path / "run")
    assert line == f"kto-train: error: {tmp_path / 'cache' / 'manifest.json'}: no manifest; is {tmp_path / 'cache'} a finished kto-precompute cache?"


def test_train_missing_model_and_eval_cache(tmp_path, tiny_cache):
    line = refused("kto.train.cli", "--cache", tiny_cache, "--model", tmp_path / "modle", "--out", tmp_path / "run")
    assert line == f"kto-train: error: --model {tmp_path / 'modle'}: no such file or directory"
    line = refused("kto.train.cli", "--cache", tiny_cache, "--model", "ORG/NAME", "--out", tmp_path / "run", "--eval-cache", tmp_path / "eval")
    assert line == f"kto-train: error: {tmp_path / 'eval'}: no such cache directory"
    assert not (tmp_path / "run").exists()
