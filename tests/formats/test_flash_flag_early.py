"""--attn-implementation flash_attention_2 without the flash-attn package: refused on one line
before anything is written, as the --config file's flash_attn key is. It failed at the model's
load, after kto-precompute had read and staged the rows into --out (a .staging file, journals,
eval/) and with the load's ImportError."""

import importlib.util

import pytest
from conftest import one_line_error, run_precompute, run_train

from kto.formats.config_names import FLASH_PACKAGES


@pytest.fixture
def no_flash(monkeypatch):
    monkeypatch.setattr("kto.formats.config_names.installed", lambda module: False)


def test_precompute_refuses_before_writing(no_flash, tiny_model_dir, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "a", "completion": "b", "label": true}\n{"prompt": "c", "completion": "d", "label": false}\n')
    out = tmp_path / "cache"
    result = run_precompute("--data", str(rows), "--model", str(tiny_model_dir), "--out", str(out), "--attn-implementation", "flash_attention_2")
    assert one_line_error(result) == (
        "kto-precompute: error: --attn-implementation flash_attention_2 needs the flash-attn package (pip install flash-attn): "
        "install it, or give --attn-implementation sdpa"
    )
    assert not out.exists()


@pytest.mark.parametrize("kernel", sorted(FLASH_PACKAGES))
def test_train_refuses_before_writing(no_flash, tiny_cache, tiny_model_dir, tmp_path, kernel):
    out = tmp_path / "run"
    line = one_line_error(run_train(tiny_cache, tiny_model_dir, out, "--attn-implementation", kernel))
    assert line.startswith(f"kto-train: error: --attn-implementation {kernel} needs ") and line.endswith("install it, or give --attn-implementation sdpa")
    assert not out.exists()


def test_the_check_reads_the_real_environment():
    """installed() is find_spec: here flash-attn is absent or present, and the answer says so."""
    from kto.formats.config_names import installed

    assert installed("flash_attn") == (importlib.util.find_spec("flash_attn") is not None)
    assert installed("json")


def test_the_kernels_package_is_enough(monkeypatch):
    """Without flash_attn transformers 5 takes the kernel from the kernels hub where the `kernels`
    package is installed: not refused then (the load says whether the hub answers)."""
    from kto.formats.compute.load_options import check_flash_package
    from kto.formats.config_names import flash_loadable

    monkeypatch.setattr("kto.formats.config_names.installed", lambda module: module == "kernels")
    assert flash_loadable("flash_attention_2") and flash_loadable("flash_attention_3")
    check_flash_package("flash_attention_2")  # no refusal
    monkeypatch.setattr("kto.formats.config_names.installed", lambda module: False)
    assert not flash_loadable("flash_attention_2") and flash_loadable("sdpa")
