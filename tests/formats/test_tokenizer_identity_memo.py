"""tokenizer_identity remembers each pipeline's digest by the serialized text's hash (sorting the
1.5 MB of JSON took 0.5 s a call, once per command run in one process). Remembered or not, the
digest is the one caches record: the sorted JSON of the pipeline without its padding and
truncation, so old caches still match."""

import hashlib
import json

from transformers import AutoTokenizer

from kto.formats.compute.identity import tokenizer_identity


def recorded_pipeline_digest(tokenizer) -> str:
    """The digest as the cache format defines it, computed from scratch."""
    pipeline = json.loads(tokenizer.backend_tokenizer.to_str())
    pipeline.pop("padding", None)
    pipeline.pop("truncation", None)
    return hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode()).hexdigest()


def test_each_pipeline_keeps_its_own_digest_however_often_it_is_asked(tiny_model_dir):
    plain = AutoTokenizer.from_pretrained(tiny_model_dir)
    grown = AutoTokenizer.from_pretrained(tiny_model_dir)
    grown.add_tokens(["<kto_memo_test>"])  # another pipeline: its added tokens differ
    expected = {"plain": recorded_pipeline_digest(plain), "grown": recorded_pipeline_digest(grown)}
    assert expected["plain"] != expected["grown"]
    for _ in range(2):  # the second round is answered from the memo
        assert tokenizer_identity(plain)["pipeline"] == expected["plain"]
        assert tokenizer_identity(grown)["pipeline"] == expected["grown"]


def test_padding_and_truncation_settings_leave_the_digest_alone(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = tokenizer_identity(tokenizer)["pipeline"]
    tokenizer.backend_tokenizer.enable_padding(pad_id=tokenizer.pad_token_id or 0, length=17)
    tokenizer.backend_tokenizer.enable_truncation(max_length=9)
    assert tokenizer_identity(tokenizer)["pipeline"] == before == recorded_pipeline_digest(tokenizer)
