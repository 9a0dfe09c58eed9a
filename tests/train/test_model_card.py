"""final/README.md, the model card (full, adapter, merged), and adapter_config.json's base named
as the user gave it: a hub id stays a hub id, a relative path stays relative."""

import json
import shutil

import pytest
import yaml
from conftest import metrics, run_train

from kto.formats.manifest import read_manifest

ARGS = ["--batch-size", "2", "--lr", "1e-3", "--log-every", "1", "--max-steps", "2", "--beta", "0.25", "--desirable-weight", "1.5"]


def card(folder):
    """(front matter, body) of folder/README.md."""
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta), body


def row(body, name):
    """The value cells of the table row named `name`."""
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r} in\n{body}")


def test_full_run_card_says_what_the_run_files_say(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--eval-cache", str(tiny_eval_cache))
    assert result.exit_code == 0, result.output
    meta, body = card(out / "final")
    assert meta["library_name"] == "transformers" and "kto" in meta["tags"] and meta["pipeline_tag"] == "text-generation"
    assert "base_model" not in meta  # a local path is no hub id: the Hub would reject it there
    manifest = read_manifest(tiny_cache)
    (source,) = manifest.content.inputs
    assert row(body, "base model") == [f"`{tiny_model_dir}`"]
    assert row(body, "cache fingerprint") == [f"`{manifest.fingerprint}`"]
    assert row(body, "eval cache fingerprint") == [f"`{read_manifest(tiny_eval_cache).fingerprint}`"]
    assert row(body, "data") == [f"`chat.jsonl` (sha256 `{source['sha256'][:16]}…`)"]
    assert row(body, "β") == ["0.25"] and row(body, "desirable weight w_D") == ["1.5"] and row(body, "undesirable weight w_U") == ["1"]
    assert row(body, "learning rate") == ["0.001 (linear, 0 warmup steps (warmup ratio 0.1 of 2 steps))"]
    assert row(body, "steps") == ["2 (batch 2 × accumulation 1 × 1 processes)"]
    lines = metrics(out)
    last_train = [m for m in lines if m["split"] == "train"][-1]
    last_eval = [m for m in lines if m["split"] == "eval"][-1]
    for name in ("loss", "kl", "rewards/margins"):
        assert row(body, name) == [f"{last_train[name]:.6g}", f"{last_eval[name]:.6g}"]
    assert not list((out / "final").glob(".*tmp*"))  # written through a temp name, renamed


def test_the_learning_rate_row_names_the_warmup_that_ran_and_the_schedules_kwargs():
    """Seen in a review: --warmup-steps 2 with --lr-schedule-kwargs showed "warmup ratio 0.1"
    (which --warmup-steps overrides) and no kwargs."""
    from kto.train.model_card import learning_rate_line

    base = {"lr": 1e-3, "lr_schedule": "linear", "warmup_ratio": 0.1, "warmup_steps": 0, "lr_schedule_kwargs": {}}
    assert learning_rate_line(base, 1, 10) == "0.001 (linear, 1 warmup step (warmup ratio 0.1 of 10 steps))"
    given = {**base, "lr_schedule": "cosine_with_min_lr", "warmup_steps": 2, "lr_schedule_kwargs": {"min_lr_rate": 0.1}}
    assert learning_rate_line(given, 2, 10) == '0.001 (cosine_with_min_lr {"min_lr_rate": 0.1}, 2 warmup steps (warmup_steps 2))'


def test_trackers_get_numbers_as_numbers():
    """Every value reached TensorBoard's hparams, wandb and mlflow as a string (lr "1e-06")."""
    from kto.train.trackers import tracker_config

    config = {"lr": 1e-6, "batch_size": 4, "fsdp": False, "run_name": "x", "eval_cache": None, "lr_schedule_kwargs": {"a": 1}}
    assert tracker_config(config) == {"lr": 1e-6, "batch_size": 4, "fsdp": False, "run_name": "x", "eval_cache": "None", "lr_schedule_kwargs": "{'a': 1}"}


@pytest.fixture
def hub_model(tmp_path, tiny_model_dir, monkeypatch):
    """`kto-test/tiny` resolvable offline: the tiny model in an HF cache folder, the Hub unreachable."""
    from huggingface_hub import constants

    sha = "a" * 40
    repo = tmp_path / "hf-hub" / "models--kto-test--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return "kto-test/tiny"


def test_adapter_names_a_hub_base_by_its_id(tiny_cache, hub_model, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "run"
    result = run_train(tiny_cache, hub_model, out, *ARGS, "--lora-r", "4", "--merge-adapters")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "final" / "adapter_config.json").read_text())["base_model_name_or_path"] == "kto-test/tiny"
    meta, body = card(out / "final")
    assert meta["base_model"] == "kto-test/tiny" and meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert row(body, "weights in this folder") == ["LoRA adapters (r 4, alpha 16)"]
    meta, body = card(out / "final-merged")
    assert meta["base_model"] == "kto-test/tiny" and meta["library_name"] == "transformers"
    assert row(body, "weights in this folder")[0].startswith("the base model with the LoRA adapters merged in")


def test_adapter_names_a_local_base_as_given_not_as_an_absolute_path(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    monkeypatch.chdir(tiny_model_dir.parent)
    out = tmp_path / "run"
    result = run_train(tiny_cache, tiny_model_dir.name, out, *ARGS, "--lora-r", "4")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "final" / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_model_dir.name
    meta, body = card(out / "final")
    assert "base_model" not in meta and row(body, "base model") == [f"`{tiny_model_dir.name}`"]


class Killed(Exception):
    """The injected crash."""


def crash_once_visible(monkeypatch, out, name):
    """Make the process die right after OUT/`name` appears: atomic_dir fsyncs the parent folder
    just after its rename, and that is the first fsync of OUT once `name` exists."""
    from kto.formats import atomic

    fsync_dir = atomic._fsync_dir

    def fsync_then_crash(path):
        fsync_dir(path)
        if path == out and (out / name).is_dir():
            raise Killed(f"killed once {name}/ appeared")

    monkeypatch.setattr(atomic, "_fsync_dir", fsync_then_crash)


def test_a_crash_right_after_final_appears_leaves_final_with_its_card(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """The card is part of final/'s atomic write: a watcher that uploads final/ the moment it
    appears, or a crash at that moment, sees the card with the last logged metrics."""
    out = tmp_path / "run"
    crash_once_visible(monkeypatch, out, "final")
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS)
    assert isinstance(result.exception, Killed), result.output
    _, body = card(out / "final")
    last_train = [m for m in metrics(out) if m["split"] == "train"][-1]
    assert last_train["step"] == 2 and row(body, "loss") == [f"{last_train['loss']:.6g}", "n/a"]
    assert row(body, "weights in this folder") == ["every weight (full fine-tune)"]


def test_a_crash_right_after_final_merged_appears_leaves_both_cards(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    out = tmp_path / "run"
    crash_once_visible(monkeypatch, out, "final-merged")
    result = run_train(tiny_cache, tiny_model_dir, out, *ARGS, "--lora-r", "4", "--merge-adapters")
    assert isinstance(result.exception, Killed), result.output
    last_loss = f"{[m for m in metrics(out) if m['split'] == 'train'][-1]['loss']:.6g}"
    _, body = card(out / "final")
    assert row(body, "weights in this folder") == ["LoRA adapters (r 4, alpha 16)"] and row(body, "loss")[0] == last_loss
    _, body = card(out / "final-merged")
    assert row(body, "weights in this folder")[0].startswith("the base model with the LoRA adapters merged in") and row(body, "loss")[0] == last_loss


def test_final_and_checkpoints_carry_the_template_the_cache_was_rendered_with(tmp_path, tiny_model_dir):
    """kto-precompute --chat-template renders the prompts with another template than --model's.
    The policy learns that format, so final/ and each checkpoint must ship it: with --model's
    own template a server would prompt the model in a format it was never trained on. A cache
    copy without the template keeps --model's and says so."""
    from click.testing import CliRunner
    from conftest import chat_rows, precompute_args, write_rows
    from transformers import AutoTokenizer

    from kto.precompute.cli import main

    template = "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}### assistant:\n{% endif %}"
    (tmp_path / "t.jinja").write_text(template)
    cache = tmp_path / "cache"
    args = precompute_args(write_rows(tmp_path / "chat.jsonl", chat_rows()), tiny_model_dir, cache, "--chat-template", str(tmp_path / "t.jinja"))
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    own = AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    assert own and own != template
    result = run_train(cache, tiny_model_dir, tmp_path / "run", "--batch-size", "4", "--max-steps", "2", "--save-every", "1", "--log-every", "1")
    assert result.exit_code == 0, result.output
    for saved in ("final", "checkpoint-1"):
        assert AutoTokenizer.from_pretrained(tmp_path / "run" / saved).chat_template == template, saved
    (cache / "tokenizer" / "chat_template.jinja").unlink()
    result = run_train(cache, tiny_model_dir, tmp_path / "run2", "--batch-size", "4", "--max-steps", "1")
    assert result.exit_code == 0, result.output
    assert "chat_template.jinja is missing; checkpoints and final/ keep --model's chat template" in result.output
    assert AutoTokenizer.from_pretrained(tmp_path / "run2" / "final").chat_template == own


def test_a_gguf_base_is_named_by_its_folder_and_loaded_with_gguf_file(tmp_path, monkeypatch):
    """peft loads an adapter's base as AutoModelForCausalLM.from_pretrained(base_model_name_or_path,
    **kwargs): a GGUF model is its folder plus gguf_file=, never the .gguf path itself."""
    from kto.formats.compute.sources import resolve_source
    from kto.train.model_card import load_line

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.Q4_1.gguf").write_bytes(b"GGUF")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_source("models/m.Q4_1.gguf").peft_base == "models"
    assert resolve_source("models").peft_base == "models"  # a folder of one GGUF file, as given
    assert resolve_source("plain").peft_base == "plain"
    assert load_line({"model": "models/m.Q4_1.gguf"}, adapter=True) == (
        '`peft.AutoPeftModelForCausalLM.from_pretrained("<this folder>", gguf_file="m.Q4_1.gguf")` '
        "(the base is the GGUF file `models/m.Q4_1.gguf`, dequantized on load)"
    )
    assert load_line({"model": "plain", "merge_adapters": True}, adapter=True) == (
        '`peft.AutoPeftModelForCausalLM.from_pretrained("<this folder>")` (the base is `plain`); '
        "the run directory that holds this folder also holds final-merged/, the same model merged, which loads without peft "
        "(kto-train's --push-to-hub uploads this folder alone)"
    )
    assert load_line({"model": "models/m.Q4_1.gguf"}, adapter=False) == '`transformers.AutoModelForCausalLM.from_pretrained("<this folder>")`'
