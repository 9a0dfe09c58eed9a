"""Real rows (../shared/data: LLaMA-Factory `messages` + label, and ShareGPT pairs) through
kto-precompute → kto-inspect verify → 2 kto-train steps, at --max-length 256 and 1024, with a
tiny random Llama over SmolLM2's tokenizer. Skipped when the data folder is absent."""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from click.testing import CliRunner
from conftest import metrics, run_train
from transformers import AutoTokenizer

from kto.formats.manifest import read_manifest
from kto.inspection.verify import verify
from kto.precompute.cli import main as precompute
from kto.precompute.inputs.records import iter_examples
from kto.precompute.tokenize import tokenize_example

DATA = Path(os.environ.get("KTO_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def data_slice(name: str, out: Path) -> Path:
    """Every 12th record (13 of 150): short and long rows alike, in the file's own shape; at
    both lengths some of them have their prompt cut (checked below)."""
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path}: real data absent (set KTO_SHARED_DATA, or put shared/ beside the repository)")
    out.write_text(json.dumps(json.loads(path.read_text())[::12]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kto_en_demo.json", "dpo_en_demo.json"])
@pytest.mark.parametrize("max_length", [256, 1024])
def test_real_rows_precompute_verify_and_train(name, max_length, tmp_path, tiny_model_dir):
    data = data_slice(name, tmp_path / name)
    cache = tmp_path / "cache"
    args = ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(cache), "--max-length", str(max_length)]
    result = CliRunner().invoke(precompute, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [p for r in verify(cache, check_tokenizer=False) for p in r.problems] == []

    # Against the untruncated tokenization: a row whose own sequence fits keeps its prompt, and
    # every cut prompt starts as the whole one does (SmolLM2's `<|im_start|>`: a turn header).
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    whole = {ex.id: tokenize_example(ex, tok) for ex in iter_examples([data])}
    manifest = read_manifest(cache)
    rows = pa.concat_tables([ipc.open_file(pa.memory_map(str(cache / s.name))).read_all() for s in manifest.shards]).to_pylist()
    cut = [r for r in rows if r["prompt_ids"] != whole[r["id"]].prompt_ids.tolist()]
    for r in cut:
        full = whole[r["id"]]
        assert len(full.prompt_ids) + len(full.completion_ids) > max_length, f"{r['id']} fits, yet its prompt was cut"
        assert tok.convert_ids_to_tokens(r["prompt_ids"][0]) == "<|im_start|>"
    c = manifest.counts
    assert len(cut) == c.prompt_truncated == c.prompt_cut_by_turns + c.prompt_cut_mid_text > 0  # the slice exercises the cut

    run = tmp_path / "run"
    result = run_train(cache, tiny_model_dir, run, "--max-steps", "2", "--batch-size", "4", "--log-every", "1")
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in metrics(run) if "loss" in m and m.get("split") != "eval"] == [1, 2]
