"""LLaMA-Factory's `flash_attn` is read as attn_implementation by both commands (it was ignored:
`flash_attn: fa2` ran sdpa), and `overwrite_cache: true`, in every LLaMA-Factory example file,
is kto-precompute's --overwrite: a cache of another configuration is replaced, one of the same
configuration is kept and resumed (its shards are not scored again)."""

from __future__ import annotations

import pytest

from kto.formats.config_keys import PRECOMPUTE, TRAIN
from kto.formats.config_names import resolve
from kto.formats.errors import InputError

LF = {"stage": "kto", "model_name_or_path": "m", "finetuning_type": "full"}


@pytest.mark.parametrize("command", [PRECOMPUTE, TRAIN])
@pytest.mark.parametrize(
    "value, ours",
    [("fa2", "flash_attention_2"), ("fa3", "flash_attention_3"), ("sdpa", "sdpa"), ("disabled", "eager")],
)
def test_flash_attn_is_attn_implementation(command, value, ours, flash_installed):
    resolved = resolve({**LF, "flash_attn": value}, command)
    assert resolved.values["attn_implementation"] == ours and resolved.origin["attn_implementation"] == "flash_attn"
    assert f"flash_attn: {value} -> attn_implementation {ours} (LLaMA-Factory's {value})" in resolved.notes


@pytest.mark.parametrize("command", [PRECOMPUTE, TRAIN])
def test_flash_attn_auto_leaves_the_command_its_default(command):
    resolved = resolve({**LF, "flash_attn": "auto"}, command)
    assert "attn_implementation" not in resolved.values
    assert (
        "flash_attn: auto -> attn_implementation as given, else sdpa (the command's default; LLaMA-Factory's auto leaves the "
        "choice to transformers, which picks sdpa where the model has it)"
    ) in resolved.notes


def test_flash_attn_and_attn_implementation_must_agree(flash_installed):
    assert resolve({**LF, "flash_attn": "fa2", "attn_implementation": "flash_attention_2"}, TRAIN).values["attn_implementation"] == "flash_attention_2"
    with pytest.raises(InputError, match=r"set the same option \(attn_implementation\); give one"):
        resolve({**LF, "flash_attn": "fa2", "attn_implementation": "eager"}, TRAIN)


def test_an_unknown_flash_attn_is_refused():
    with pytest.raises(InputError) as caught:
        resolve({**LF, "flash_attn": "fa9"}, PRECOMPUTE)
    assert str(caught.value) == "flash_attn: 'fa9': LLaMA-Factory's values are auto, disabled, sdpa, fa2 and fa3 (attn_implementation names the kernel itself)"


def test_overwrite_cache_true_is_overwrite():
    resolved = resolve({**LF, "overwrite_cache": True}, PRECOMPUTE)
    assert resolved.values["overwrite"] is True and resolved.origin["overwrite"] == "overwrite_cache"
    assert resolved.default_notes["overwrite"] == (
        "overwrite_cache: true -> overwrite: a cache of another configuration in the cache directory is replaced; "
        "one of this configuration is kept (resumed, not scored again)"
    )
    assert "overwrite" not in resolve({**LF, "overwrite_cache": False}, PRECOMPUTE).default_notes
    assert resolve({**LF, "overwrite_cache": False}, PRECOMPUTE).values["overwrite"] is False
    trained = resolve({**LF, "overwrite_cache": True}, TRAIN)
    assert "overwrite_cache" in trained.other_values and not any(n.startswith("overwrite_cache: ignored") for n in trained.notes)


@pytest.fixture
def flash_installed(monkeypatch):
    """The flash kernels' packages as installed (this machine has none): the mapping itself is tested."""
    monkeypatch.setattr("kto.formats.config_names.installed", lambda module: True)


@pytest.fixture
def no_flash(monkeypatch):
    monkeypatch.setattr("kto.formats.config_names.installed", lambda module: module not in ("flash_attn", "flash_attn_interface", "kernels"))


@pytest.mark.parametrize("command", [PRECOMPUTE, TRAIN])
def test_flash_attn_without_its_package_is_refused_at_resolution_naming_the_key(command, no_flash):
    """It failed only once the data was read, at the model's load, naming --model, never the key."""
    with pytest.raises(InputError) as caught:
        resolve({**LF, "flash_attn": "fa2"}, command)
    assert str(caught.value) == (
        "flash_attn: fa2 needs the flash-attn package (pip install flash-attn; LLaMA-Factory falls back to sdpa with a warning, "
        "kto-* do not, since the cache records the kernel): install it, or write flash_attn: sdpa"
    )
    with pytest.raises(InputError) as caught:
        resolve({**LF, "flash_attn": "fa3"}, command)
    assert str(caught.value).startswith("flash_attn: fa3 needs FlashAttention 3's flash_attn_interface module (flash-attn-3")
    assert str(caught.value).endswith("install it, or write flash_attn: sdpa")


@pytest.mark.parametrize("command", [PRECOMPUTE, TRAIN])
def test_attn_implementation_flash_without_its_package_is_refused_naming_the_key(command, no_flash):
    with pytest.raises(InputError) as caught:
        resolve({**LF, "attn_implementation": "flash_attention_2"}, command)
    assert str(caught.value) == (
        "attn_implementation: flash_attention_2 needs the flash-attn package (pip install flash-attn): install it, or write attn_implementation: sdpa"
    )
    assert resolve({**LF, "attn_implementation": "sdpa"}, command).values["attn_implementation"] == "sdpa"
    assert resolve({**LF, "flash_attn": "sdpa"}, command).values["attn_implementation"] == "sdpa"


def test_the_conflict_line_shows_the_value_written(flash_installed):
    for raw in ({**LF, "flash_attn": "fa2", "attn_implementation": "sdpa"}, {**LF, "attn_implementation": "sdpa", "flash_attn": "fa2"}):
        with pytest.raises(InputError) as caught:
            resolve(raw, TRAIN)
        assert str(caught.value) == (
            "flash_attn: 'fa2' (attn_implementation flash_attention_2) and attn_implementation: 'sdpa' set the same option (attn_implementation); give one"
        )
