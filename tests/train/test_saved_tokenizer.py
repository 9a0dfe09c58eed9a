"""The tokenizer kto-train saves beside trained weights is --model's as given: the EOS pad that
formats.compute.loading.load_tokenizer lends a tokenizer without a pad token is for padding
inside kto-offline only, and must not reach final/, final-merged/ or a checkpoint."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_cache, make_tiny_llama, run_train, text_rows

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def padless_model(tmp_path_factory, tokenizer_dir) -> Path:
    """The tiny Llama over SmolLM2's tokenizer with its pad token taken out (config.json's
    pad_token_id null, as SmolLM2-style models without a pad token ship)."""
    tok = tmp_path_factory.mktemp("padless-tokenizer")
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, tok / name)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    assert config.pop("pad_token") == "<|im_end|>"  # the fixture's tokenizer has one: else this tests nothing
    (tok / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return make_tiny_llama(tmp_path_factory.mktemp("padless-llama"), tok, pad_token_id=None)


def test_saved_tokenizers_have_no_lent_pad_and_equal_the_models(padless_model, tmp_path):
    pytest.importorskip("peft")
    given = json.loads((padless_model / "tokenizer_config.json").read_text())
    assert "pad_token" not in given
    assert json.loads((padless_model / "config.json").read_text())["pad_token_id"] is None
    cache = make_cache(tmp_path, text_rows(), padless_model)
    out = tmp_path / "run"
    args = ["--batch-size", "2", "--max-steps", "1", "--save-every", "1", "--lora-r", "2", "--merge-adapters"]
    result = run_train(cache, padless_model, out, *args)
    assert result.exit_code == 0, result.output
    for folder in ("final", "final-merged", "checkpoint-1"):
        saved = json.loads((out / folder / "tokenizer_config.json").read_text())
        assert "pad_token" not in saved, folder
        assert saved == given, folder
        for name in TOKENIZER_FILES[1:]:
            assert (out / folder / name).read_bytes() == (padless_model / name).read_bytes(), f"{folder}/{name}"
    assert json.loads((out / "final-merged" / "config.json").read_text()).get("pad_token_id") is None
