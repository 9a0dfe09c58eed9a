"""docs/migrating.md: a TRL-style and a LLaMA-Factory-style YAML run both commands, changed only
by the documented one-liner (`cache: DIR`), on the tiny model of conftest. The model, data and
output paths are the user's own values."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from conftest import chat_rows, metrics, text_rows, write_rows

from kto.precompute.cli import main as precompute
from kto.train.cli import main as train

# The arguments of TRL's examples/scripts/kto.py (its docstring's LoRA command) as a KTOConfig
# YAML, plus the one line `cache:`.
TRL_YAML = """\
model_name_or_path: {model}
dataset_name: {data}
per_device_train_batch_size: 16
num_train_epochs: 1
learning_rate: 5.0e-7
lr_scheduler_type: cosine
gradient_accumulation_steps: 1
logging_steps: 10
eval_steps: 500
output_dir: {out}
warmup_ratio: 0.1
report_to: none
bf16: true
logging_first_step: true
use_peft: true
lora_target_modules: all-linear
max_length: 1024
max_prompt_length: 512
beta: 0.1
desirable_weight: 1.0
undesirable_weight: 1.0
resume_from_checkpoint: null
cache: {cache}
"""

# LLaMA-Factory's examples/train_lora/llama3_lora_kto.yaml, plus the one line `cache:`. Its
# `dataset: kto_en_demo` is read from data/dataset_info.json, as LLaMA-Factory reads it.
LF_YAML = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: kto
do_train: true
finetuning_type: lora
lora_target: all
pref_beta: 0.1

### dataset
dataset: kto_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
cache: {cache}

### output
output_dir: {out}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 5.0e-6
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000

### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""


def run_both(config: Path) -> tuple[str, str]:
    from accelerate.state import AcceleratorState

    first = CliRunner().invoke(precompute, ["--config", str(config)], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    AcceleratorState._reset_state(reset_partial_state=True)
    second = CliRunner().invoke(train, ["--config", str(config)], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    return first.output, second.output


def test_a_trl_kto_config_runs_with_one_line_added(tmp_path, tiny_model_dir):
    data = tmp_path / "kto-data"
    data.mkdir()
    write_rows(data / "train.jsonl", text_rows())  # a local `datasets` directory: TRL's unpaired shape
    out, cache = tmp_path / "kto-aligned-model", tmp_path / "kto-cache"
    config = tmp_path / "kto.yaml"
    config.write_text(TRL_YAML.format(model=tiny_model_dir, data=data, out=out, cache=cache))
    precompute_log, train_log = run_both(config)
    assert f"--config {config}: kto-train's keys, ignored by kto-precompute: per_device_train_batch_size," in precompute_log
    assert "use_peft: true -> LoRA on" in train_log and "bf16: true -> mixed_precision bf16" in train_log
    assert "eval_steps: ignored (no eval set: give --eval-cache, val_size, or eval_strategy with dataset_test_split)" in train_log
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 16 and manifest["content"]["max_length"] == 1024
    record = json.loads((out / "kto_run.json").read_text())["config"]
    assert (record["lr"], record["lr_schedule"], record["batch_size"], record["lora_r"], record["lora_alpha"]) == (5e-7, "cosine", 16, 16, 32.0)
    assert [m["step"] for m in metrics(out)] == [1]  # 16 rows, 16 per step, 1 epoch
    assert json.loads((out / "final" / "adapter_config.json").read_text())["r"] == 16
    # transformers' defaults where the file is silent: no save_steps, no seed (it gives warmup_ratio).
    assert (record["seed"], record["save_every"], record["warmup_ratio"]) == (42, 500, 0.1)
    assert (record["mixed_precision"], record["gradient_checkpointing"]) == ("bf16", True)  # bf16: true; KTOConfig's default
    assert "not given, transformers' defaults (TRL's KTOConfig keeps them): seed 42" in train_log
    # The file edited after the cache was made, and only kto-train rerun: said in a warning line,
    # not under "ignored" alone (a flag over the file makes such a cache on purpose, so no refusal).
    config.write_text(config.read_text().replace("max_length: 1024", "max_length: 2048"))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    again = CliRunner().invoke(train, ["--config", str(config)])
    warning = f"kto-train: warning: --config {config}: max_length: 2048 (the cache's max_length: 1024): the cache {cache} was made with other values"
    assert warning in again.output and f"rerun kto-precompute --config {config} --overwrite if the file is what you meant" in again.output
    assert again.exit_code == 2 and "holds an earlier run; pass --resume" in again.output  # same --out: the run's own refusal


def test_a_trl_config_with_an_eval_strategy_evaluates_on_its_test_split(tmp_path, tiny_model_dir):
    """TRL evaluates on dataset[dataset_test_split] (default `test`) when eval_strategy is not
    `no`; that key was ignored here, and no evaluation ran. kto-precompute now scores the split
    into CACHE/eval (--eval-data) and kto-train evaluates on it every eval_steps."""
    data = tmp_path / "kto-data"
    data.mkdir()
    rows = text_rows()
    write_rows(data / "train.jsonl", rows[:12])
    write_rows(data / "test.jsonl", rows[12:])
    out, cache = tmp_path / "run", tmp_path / "cache"
    config = tmp_path / "kto.yaml"
    trl = TRL_YAML.format(model=tiny_model_dir, data=data, out=out, cache=cache).replace("eval_steps: 500", "eval_strategy: steps\neval_steps: 1")
    config.write_text(trl.replace("num_train_epochs: 1", "max_steps: 1").replace("per_device_train_batch_size: 16", "per_device_train_batch_size: 4"))
    precompute_log, train_log = run_both(config)
    assert f"dataset_test_split test -> eval_data hf:{data}:test (CACHE/eval)" in precompute_log
    train_manifest, eval_manifest = (json.loads((c / "manifest.json").read_text()) for c in (cache, cache / "eval"))
    assert (train_manifest["counts"]["rows"], eval_manifest["counts"]["rows"]) == (12, 4)
    assert [i["name"] for i in eval_manifest["content"]["eval_inputs"]] == ["kto-data:test"]  # names, never paths
    assert f"dataset_test_split -> --eval-cache {cache / 'eval'}" in train_log
    assert [(m["step"], m.get("split")) for m in metrics(out)] == [(1, "train"), (1, "eval")], metrics(out)


# LLaMA-Factory's data/dataset_info.json entry for its KTO demo file.
KTO_EN_DEMO = {
    "file_name": "kto_en_demo.json",
    "formatting": "sharegpt",
    "columns": {"messages": "messages", "kto_tag": "label"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
}


def test_a_llama_factory_kto_yaml_runs_with_one_line_added(tmp_path, tiny_model_dir, monkeypatch):
    # LLaMA-Factory's kto_en_demo shape: `messages` (user/assistant turns) + `label`, a JSON array
    # in data/ beside data/dataset_info.json; the commands run from the folder holding data/.
    rows = [{"messages": r["prompt"] + r["completion"], "label": r["label"]} for r in chat_rows()]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "kto_en_demo.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"kto_en_demo": KTO_EN_DEMO}, indent=2))
    monkeypatch.chdir(tmp_path)
    out, cache = tmp_path / "saves" / "lora" / "kto", tmp_path / "kto-cache"
    config = tmp_path / "llama3_lora_kto.yaml"
    config.write_text(LF_YAML.format(model=tiny_model_dir, out=out, cache=cache))
    precompute_log, train_log = run_both(config)
    assert "stage: kto: ignored" in precompute_log and "template: ignored" in precompute_log
    assert "finetuning_type: lora -> LoRA on" in train_log and f"val_size -> --eval-cache {cache / 'eval'}" in train_log
    train_rows = json.loads((cache / "manifest.json").read_text())["counts"]["rows"]
    eval_rows = json.loads((cache / "eval" / "manifest.json").read_text())["counts"]["rows"]
    assert train_rows + eval_rows == 16 and eval_rows >= 1
    record = json.loads((out / "kto_run.json").read_text())["config"]
    assert (record["lr"], record["beta"], record["grad_accum"], record["epochs"], record["lora_r"], record["lora_alpha"]) == (5e-6, 0.1, 8, 3.0, 8, 16.0)
    steps = -(-train_rows // 8) * 3  # ⌈rows / 8⌉ steps per epoch, 3 epochs
    lines = metrics(out)
    assert [m["step"] for m in lines if m.get("split") != "eval"] == [steps]  # logging_steps 10 > steps: the last step is logged
    assert any(m.get("split") == "eval" for m in lines)
    assert json.loads((out / "final" / "adapter_config.json").read_text())["r"] == 8


def test_the_guide_says_where_the_model_lands_and_how_prompts_are_cut():
    """TRL and LLaMA-Factory save the model at output_dir's root; kto-train in output_dir/final/,
    so a follow-up `adapter_name_or_path: saves/x` must name saves/x/final. Each tool cuts a long
    row differently: the cutoff_len and max_length rows say how."""
    guide = (Path(__file__).parent.parent / "docs" / "migrating.md").read_text()
    rows = [line for line in guide.splitlines() if line.startswith("| `output_dir` |")]
    assert len(rows) == 2 and all("final/" in row and "final-merged/" in row and "saves/x/final" in row for row in rows)
    cutoff = next(line for line in guide.splitlines() if line.startswith("| `cutoff_len` |"))
    assert "infer_seqlen" in cutoff and "keeps its start" in cutoff
    max_length = next(line for line in guide.splitlines() if line.startswith("| `max_length`, `max_prompt_length` |"))
    assert "cuts only the completion" in max_length
