"""manifest.same_model: a LATER_WEIGHT_KEYS entry is compared whenever both sides have it, and
skipped only where one side's weight file lacks it (a record made before the key existed)."""

import pytest

from kto.formats.manifest import LATER_WEIGHT_KEYS, same_model


def identity(**weight):
    entry = {"size": 1000, "sha256": "a" * 64, "small_tensors_sha256": "b" * 64, **weight}
    return {"path": "m", "config_sha256": "c" * 64, "weights": {"model.safetensors": {k: v for k, v in entry.items() if v is not None}}}


def test_the_later_keys_are_the_two_hashes():
    assert LATER_WEIGHT_KEYS == {"sha256", "small_tensors_sha256"}


@pytest.mark.parametrize("key", ["sha256", "small_tensors_sha256"])
def test_a_later_key_on_both_sides_that_differs_is_another_model(key):
    assert same_model(identity(), identity())
    assert not same_model(identity(), identity(**{key: "f" * 64}))
    assert not same_model(identity(**{key: "f" * 64}), identity())


@pytest.mark.parametrize("key", ["sha256", "small_tensors_sha256"])
def test_a_later_key_on_one_side_only_is_not_compared(key):
    older = identity(**{key: None})
    assert key not in older["weights"]["model.safetensors"]
    assert same_model(older, identity()) and same_model(identity(), older)
    assert same_model(older, identity(**{key: "f" * 64}))
    # ...but the other entries still are.
    assert not same_model(older, identity(size=999))
