"""A tokenizer that differs from a cache's in its chat template only is refused for what it is.

Found by a reviewer: `kto-inspect score CACHE --model M` with M's template edited (same vocabulary)
said the cached token ids "would mean other words", which is false for a template: the ids do not
depend on it. kto-train takes such a model with a note (train/setup.py check_tokenizer); scoring
refuses it, with the true reason."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from kto.formats.compute.identity import tokenizer_identity
from kto.formats.compute.tokenizer_check import require_cache_tokenizer
from kto.formats.errors import InputError


def test_a_template_only_difference_is_named_as_a_template(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    identity = tokenizer_identity(tokenizer)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(InputError) as err:
        require_cache_tokenizer(tokenizer, identity, "m")
    assert str(err.value) == (
        "--model m: its chat template is not the one the cache's prompts were rendered with (the token ids do not depend on it, "
        "the format the model answers in does). Use the model the cache was made with, or a kto-train output (final/ carries the cache's template)."
    )


def test_another_vocabulary_still_says_the_ids_would_mean_other_words(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    identity = {**tokenizer_identity(tokenizer), "vocab": "another"}
    with pytest.raises(InputError, match=r"tokenizer differs from the cache's \(vocab\); the cached token ids would mean other words"):
        require_cache_tokenizer(tokenizer, identity, "m")
