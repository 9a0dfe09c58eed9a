"""transformers' "Writing model shards" bar wrote itself, cursor-up escapes (`\x1b[A`) and all,
into kto-train's stderr log at every checkpoint. Saves now run with transformers' bars off (kto-train
says each save in its own line), and the setting is put back afterwards."""

from __future__ import annotations

import pytest

from kto.train.checkpoint import save_model_dir, saved_dir


@pytest.fixture(scope="module")
def lm_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_a_save_writes_no_progress_bar_to_stderr(tmp_path, lm_and_tokenizer, capsys):
    from transformers.utils import logging as hf_logging

    lm, tokenizer = lm_and_tokenizer
    assert hf_logging.is_progress_bar_enabled()
    with saved_dir(tmp_path / "checkpoint-1") as tmp:
        save_model_dir(lm, tokenizer, tmp)
    err = capsys.readouterr().err
    assert "Writing model shards" not in err and "\x1b[A" not in err and "\r" not in err, err
    assert (tmp_path / "checkpoint-1" / "model.safetensors").is_file()
    assert hf_logging.is_progress_bar_enabled()  # put back for the rest of the process


def test_the_setting_is_put_back_when_a_save_fails_and_a_disabled_one_stays_off(tmp_path, lm_and_tokenizer):
    from transformers.utils import logging as hf_logging

    with pytest.raises(RuntimeError, match="stop"), saved_dir(tmp_path / "a") as tmp:
        assert not hf_logging.is_progress_bar_enabled()
        (tmp / "x").write_text("x")
        raise RuntimeError("stop")
    assert hf_logging.is_progress_bar_enabled() and not (tmp_path / "a").exists()
    hf_logging.disable_progress_bar()  # a host program that turned them off keeps them off
    try:
        with saved_dir(tmp_path / "b") as tmp:
            (tmp / "x").write_text("x")
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


def test_a_model_load_off_a_terminal_writes_no_bar_and_on_one_keeps_it(tiny_model_dir, capfd, monkeypatch):
    """transformers' "Loading weights" bar redrew itself once per tensor into kto-precompute's and
    kto-train's stderr logs; off a terminal it is off for the load, and put back after; on a
    terminal, where it redraws in place, it stays."""

    import torch
    from transformers.utils import logging as hf_logging

    from kto.formats.compute import library_bars
    from kto.formats.compute.loading import load_causal_lm
    from kto.formats.compute.sources import resolve_source

    source = resolve_source(str(tiny_model_dir))
    load_causal_lm(source, dtype=torch.float32)
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
    seen = []
    monkeypatch.setattr(library_bars, "_stderr_is_terminal", lambda: True)
    monkeypatch.setattr(hf_logging, "disable_progress_bar", lambda: seen.append("off"))
    load_causal_lm(source, dtype=torch.float32)
    assert seen == []
