"""Objects where a config takes paths or text (formats/config_types.py): a DataFrame as `data`
was iterated as its column names ("id: no such file"), and a refused object was printed whole
(a loaded model: 26 lines). Each is refused in one short line that names the field and the type."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kto.formats.errors import InputError
from kto.precompute.config import PrecomputeConfig
from kto.train.config import TrainConfig

LONG_ROW = {"prompt": "Explain the KTO loss. " * 20, "completion": "It weighs desirable and undesirable answers. " * 20, "label": True}


def refusal(make) -> str:
    with pytest.raises(InputError) as refused:
        make()
    message = str(refused.value)
    assert "\n" not in message and len(message) < 100, message
    return message


def precompute(tmp_path: Path, **values) -> PrecomputeConfig:
    return PrecomputeConfig(**{"data": (tmp_path / "rows.jsonl",), "model": "m", "out": tmp_path / "out", **values})


@pytest.mark.parametrize("library", ["pandas", "polars"])
def test_a_dataframe_as_data_is_refused_by_its_type(tmp_path, library):
    frame = pytest.importorskip(library).DataFrame({"id": ["a"], "prompt": ["Hi"], "completion": ["Hello"], "label": [True]})
    assert refusal(lambda: precompute(tmp_path, data=frame)) == "--data: expected a path or a list of paths, got DataFrame"
    assert refusal(lambda: precompute(tmp_path, eval_data=frame)) == "--eval-data: expected a path or a list of paths, got DataFrame"


def test_other_collections_than_a_list_are_refused(tmp_path):
    """A set has no order (row ids and the fingerprint follow --data's); a generator or a dict's
    keys were read as paths too."""
    assert refusal(lambda: precompute(tmp_path, data={"a.jsonl"})) == "--data: expected a path or a list of paths, got set"
    assert refusal(lambda: precompute(tmp_path, data=(p for p in ["a.jsonl"]))) == "--data: expected a path or a list of paths, got generator"
    assert refusal(lambda: precompute(tmp_path, data=LONG_ROW)) == "--data: expected a path or a list of paths, got dict"
    assert refusal(lambda: precompute(tmp_path, data=5)) == "--data: expected a path or a list of paths, got int"


def test_rows_as_data_are_named_by_type_not_printed(tmp_path):
    assert refusal(lambda: precompute(tmp_path, data=[LONG_ROW])) == "--data: expected a path, got dict"


def test_a_loaded_model_is_named_by_type_not_printed(tmp_path):
    model = torch.nn.Sequential(*(torch.nn.Linear(2, 2) for _ in range(8)))
    assert refusal(lambda: TrainConfig(cache=tmp_path / "c", model=model, out=tmp_path / "run")) == "--model: expected text, got Sequential"
    assert refusal(lambda: precompute(tmp_path, model=model)) == "--model: expected text, got Sequential"


def test_short_values_are_still_shown(tmp_path):
    """What one reads at a glance stays in the message (text, numbers, switches, paths, short
    lists); a value too long for one line is named by its type."""
    assert refusal(lambda: precompute(tmp_path, data=("a.jsonl", 7))) == "--data 7: expected a path"
    assert refusal(lambda: precompute(tmp_path, max_length=[1, 2])) == "--max-length [1, 2]: expected a whole number"
    assert refusal(lambda: precompute(tmp_path, overwrite="x" * 40)) == f"--overwrite {'x' * 40!r}: expected True or False"
    assert refusal(lambda: precompute(tmp_path, overwrite="x" * 4000)) == "--overwrite: expected True or False, got str"
    assert refusal(lambda: precompute(tmp_path, out=None)) == "--out None: expected a path"


def test_every_accepted_spelling_of_data_still_works(tmp_path):
    expect = (Path("a.jsonl"), Path("b.jsonl"))
    assert precompute(tmp_path, data="a.jsonl").data == expect[:1]
    assert precompute(tmp_path, data=Path("a.jsonl")).data == expect[:1]
    assert precompute(tmp_path, data=["a.jsonl", Path("b.jsonl")]).data == expect
    assert precompute(tmp_path, data=("a.jsonl", "b.jsonl")).data == expect
