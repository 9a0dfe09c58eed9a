"""--model's meta-device skeleton is built once per command: the pre-flight's checks (prefix
sharing, positions, LoRA targets, the weight files against config.json) and the model's load
share it (the load built a second one for its weight check). A config.json claiming 50,000
layers over a 2-layer file is refused from the safetensors header, before any skeleton is built
(building one took about 200 s and 4.5 GB) and before --out is touched."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, run_train, train_error_line, write_rows

from kto.formats.compute import meta_device
from kto.formats.compute.loading import load_causal_lm
from kto.formats.compute.sources import resolve_source
from kto.formats.errors import InputError

ARGS = ("--batch-size", "2", "--max-steps", "1", "--log-every", "1")


@pytest.fixture
def builds(monkeypatch) -> list[dict]:
    """The keyword arguments of every meta-device build of a model from its config."""
    calls: list[dict] = []
    real = meta_device.on_meta

    def counted(source, trust_remote_code, **kwargs):
        calls.append(kwargs)
        return real(source, trust_remote_code, **kwargs)

    monkeypatch.setattr(meta_device, "on_meta", counted)
    return calls


@pytest.fixture
def never_built(monkeypatch) -> list[str]:
    """Records (and refuses) any build of the model, on the meta device or loaded: a 50,000-layer
    one would take minutes."""
    from transformers import AutoModelForCausalLM

    calls: list[str] = []

    def refused(*args, **kwargs):
        calls.append(str(args[0]))
        raise MemoryError("the model was built")

    monkeypatch.setattr(meta_device, "on_meta", refused)
    for name in ("from_config", "from_pretrained"):
        monkeypatch.setattr(AutoModelForCausalLM, name, refused)
    return calls


def claiming_50000_layers(model, dest):
    shutil.copytree(model, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 50_000}))
    return dest


def plain(builds: list[dict]) -> int:
    """The builds of the skeleton itself; check_attention_implementation builds its own, with
    attn_implementation="sdpa", to meet transformers' refusal of it."""
    return sum(1 for kwargs in builds if not kwargs)


def test_precompute_builds_the_skeleton_once(tmp_path, tiny_model_dir, builds):
    from kto.precompute.cli import main

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    result = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, tmp_path / "cache"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert plain(builds) == 1, builds


def test_kto_train_builds_the_skeleton_once(tmp_path, tiny_cache, tiny_model_dir, builds):
    result = run_train(tiny_cache, tiny_model_dir, tmp_path / "run", *ARGS)
    assert result.exit_code == 0, result.output
    assert plain(builds) == 1, builds


def test_precompute_refuses_50000_claimed_layers_before_any_skeleton(tmp_path, tiny_model_dir, never_built):
    from kto.precompute.cli import main

    model = claiming_50000_layers(tiny_model_dir, tmp_path / "m")
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    result = CliRunner().invoke(main, precompute_args(data, model, tmp_path / "cache"))
    errors = [line for line in result.output.splitlines() if line.startswith("kto-precompute: error:")]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert errors == [
        f"kto-precompute: error: --model {model}: config.json claims 50,000 layers (num_hidden_layers) but its weight files hold 2 "
        "(model.layers.0 to model.layers.1); transformers would fill the others with random values"
    ]
    assert never_built == [] and not (tmp_path / "cache").exists()


def test_kto_train_refuses_50000_claimed_layers_before_any_skeleton(tmp_path, tiny_cache, tiny_model_dir, never_built):
    model = claiming_50000_layers(tiny_model_dir, tmp_path / "m")
    result = run_train(tiny_cache, model, tmp_path / "run", *ARGS)
    assert result.exit_code == 2
    assert train_error_line(result.output) == (
        f"kto-train: error: --model {model}: config.json claims 50,000 layers (num_hidden_layers) but its weight files hold 2 "
        "(model.layers.0 to model.layers.1); transformers would fill the others with random values"
    )
    assert never_built == [] and not (tmp_path / "run").exists()


def test_load_causal_lm_alone_refuses_50000_claimed_layers_before_any_skeleton(tmp_path, tiny_model_dir, never_built):
    """tools/*.py and examples/ load with no pre-flight: the load makes the same check first."""
    import torch

    model = claiming_50000_layers(tiny_model_dir, tmp_path / "m")
    with pytest.raises(InputError, match=r"config\.json claims 50,000 layers \(num_hidden_layers\) but its weight files hold 2 "):
        load_causal_lm(resolve_source(str(model)), dtype=torch.float32)
    assert never_built == []
