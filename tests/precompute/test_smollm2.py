"""Slow: the real SmolLM2-135M-Instruct, loaded from its GGUF file through `--model FILE.gguf`."""

import random

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from click.testing import CliRunner
from conftest import smollm2_gguf, write_rows

from kto.formats.manifest import read_manifest
from kto.precompute.cli import main

FLUENT = [
    ("What is the capital of France?", "The capital of France is Paris, a city known for the Eiffel Tower."),
    ("Why is the sky blue?", "Sunlight is scattered by the air, and blue light is scattered the most."),
    ("How many legs does a spider have?", "A spider has eight legs, which makes it an arachnid rather than an insect."),
]


def shuffled(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


@pytest.mark.slow
def test_fluent_text_scores_higher_per_token_than_shuffled(tmp_path, monkeypatch):
    rows = []
    for i, (q, a) in enumerate(FLUENT):
        for kind, text in (("fluent", a), ("shuffled", shuffled(a, i))):
            rows.append(
                {
                    "id": f"{i}-{kind}",
                    "prompt": [{"role": "user", "content": q}],
                    "completion": [{"role": "assistant", "content": text}],
                    "label": kind == "fluent",
                }
            )
    data = write_rows(tmp_path / "real.jsonl", rows)
    out = tmp_path / "cache"
    gguf = pytest.importorskip("gguf")
    from kto.formats.compute import gguf_once

    monkeypatch.setattr(gguf_once, "_PARSED", {})  # no parse left from an earlier test of this process
    parses = []

    class CountedReader(gguf.GGUFReader):
        def __init__(self, path, mode="r"):
            parses.append(str(path))
            super().__init__(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", CountedReader)
    result = CliRunner().invoke(main, ["--data", str(data), "--model", str(smollm2_gguf()), "--out", str(out), "--max-length", "128"])
    assert result.exit_code == 0, result.output
    # The tokenizer, the config and the weights came from one parse of the file (not three:
    # ~8 s each, formats/compute/gguf_once.py).
    assert parses == [str(smollm2_gguf())]
    assert not gguf_once._PARSED  # dropped after the model's load: ~150 MB not held for the run
    table = ipc.open_file(pa.memory_map(str(out / "shard-00000.arrow"))).read_all().to_pylist()
    by_id = {r["id"]: r for r in table}
    for i in range(len(FLUENT)):
        fluent, mixed = by_id[f"{i}-fluent"], by_id[f"{i}-shuffled"]
        for r in (fluent, mixed):
            assert all(x == x and x > -100 for x in r["ref_token_logps"])  # finite
        per_token = lambda r: r["ref_logp"] / len(r["completion_ids"])
        assert per_token(fluent) > per_token(mixed) + 0.5
    assert "weights" in read_manifest(out).content.model
