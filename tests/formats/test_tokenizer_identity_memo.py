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


def recorded_vocabulary_digest(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def test_each_pipeline_keeps_its_own_digests_however_often_it_is_asked(tiny_model_dir):
    plain = AutoTokenizer.from_pretrained(tiny_model_dir)
    grown = AutoTokenizer.from_pretrained(tiny_model_dir)
    grown.add_tokens(["<kto_memo_test>"])  # another pipeline and vocabulary: its added tokens differ
    expected = {name: (recorded_pipeline_digest(tok), recorded_vocabulary_digest(tok)) for name, tok in (("plain", plain), ("grown", grown))}
    assert expected["plain"][0] != expected["grown"][0] and expected["plain"][1] != expected["grown"][1]
    for _ in range(2):  # the second round is answered from the memo
        for name, tok in (("plain", plain), ("grown", grown)):
            identity = tokenizer_identity(tok)
            assert (identity["pipeline"], identity["vocabulary"]) == expected[name]


def test_a_class_with_its_own_vocabulary_is_not_answered_from_the_memo(tiny_model_dir):
    """A tokenizer class may override get_vocab: its vocabulary is then not the serialized
    backend's, and is hashed each time."""
    base = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer_identity(base)  # the backend's text is remembered

    class Renamed(type(base)):
        def get_vocab(self):
            return {f"x{token}": i for token, i in super().get_vocab().items()}

    base.__class__ = Renamed
    assert tokenizer_identity(base)["vocabulary"] == recorded_vocabulary_digest(base)


def test_padding_and_truncation_settings_leave_the_digest_alone(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = tokenizer_identity(tokenizer)["pipeline"]
    tokenizer.backend_tokenizer.enable_padding(pad_id=tokenizer.pad_token_id or 0, length=17)
    tokenizer.backend_tokenizer.enable_truncation(max_length=9)
    assert tokenizer_identity(tokenizer)["pipeline"] == before == recorded_pipeline_digest(tokenizer)
