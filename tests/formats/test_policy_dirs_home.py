"""--model and --base-model starting with `~` (README: "A path that starts with `~` is your home
folder in every flag and config-file value"), for the policies of kto-train --eval-only and
kto-inspect score: an adapter folder or an FSDP checkpoint under `~` was taken for a whole model
(and a LoRA folder refused with "merge it first")."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_an_adapter_folder_under_home(home, tiny_model_dir):
    pytest.importorskip("peft")
    from kto.formats.compute.policy_dirs import policy_to_load

    (home / "adapters").mkdir()
    (home / "adapters" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(tiny_model_dir)}))
    (home / "base").symlink_to(tiny_model_dir, target_is_directory=True)
    for base in (None, "~/base"):
        policy = policy_to_load("~/adapters", base)
        assert policy.adjust is not None
        assert policy.what == f"{policy.source.directory} with the LoRA adapters of {home / 'adapters'}"
        assert policy.source.directory.resolve() == tiny_model_dir.resolve()


def test_an_fsdp_checkpoint_under_home(home, tiny_model_dir):
    from kto.formats.compute.policy_dirs import policy_to_load
    from kto.formats.compute.sharded import SHARDED_DIR

    (home / "ckpt" / SHARDED_DIR).mkdir(parents=True)
    policy = policy_to_load("~/ckpt", str(tiny_model_dir))
    assert policy.what == f"the weights of {home / 'ckpt'} (sharded by FSDP) on the model of {policy.source.directory}"
