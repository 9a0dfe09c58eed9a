"""kto-precompute --max-samples N: a seeded sample of at most N rows of each input, in the fingerprint."""

from __future__ import annotations

import json

import pyarrow as pa
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, text_rows, write_rows

from kto.precompute.cli import main
from kto.precompute.inputs.records import RowSample


def cache_ids(cache) -> list[str]:
    ids = []
    for shard in sorted(cache.glob("shard-*.arrow")):
        with pa.memory_map(str(shard)) as source:
            ids += pa.ipc.open_file(source).read_all().column("id").to_pylist()
    return ids


def test_a_sample_is_seeded_kept_in_file_order_and_never_larger_than_asked():
    rows = [(i, {"row": i}) for i in range(100)]
    first = RowSample(10, seed=0).rows(iter(rows), 0)
    assert len(first) == 10 and [r for r, _ in first] == sorted(r for r, _ in first)
    assert first == RowSample(10, seed=0).rows(iter(rows), 0)
    assert first != RowSample(10, seed=1).rows(iter(rows), 0)
    assert first != RowSample(10, seed=0).rows(iter(rows), 1)  # each input its own draw
    assert RowSample(200, seed=0).rows(iter(rows), 0) == rows
    # Uniform: over 2000 draws of 10 of 100 rows each row is kept about 200 times (binomial,
    # sd 13.4); the first and the last ten rows are kept as often as the middle ones.
    counts = [0] * 100
    for seed in range(2000):
        for r, _ in RowSample(10, seed=seed).rows(iter(rows), 0):
            counts[r] += 1
    assert 140 < min(counts) and max(counts) < 260, (min(counts), max(counts))


def test_held_out_inputs_draw_from_a_stream_of_their_own():
    """--eval-data's inputs are numbered from 0 as --data's are: with one stream they kept the
    same row numbers as the --data input of the same place (aligned train and test files held
    the same positions). A --data input draws as it always did."""
    rows = [(i, {"row": i}) for i in range(100)]
    train = RowSample(10, seed=0).rows(iter(rows), 0)
    held = RowSample(10, seed=0, held_out=True).rows(iter(rows), 0)
    assert [r for r, _ in train] != [r for r, _ in held]
    assert [r for r, _ in train] == [2, 5, 10, 14, 30, 41, 46, 51, 54, 86]  # what --data inputs drew before


def test_kto_precompute_keeps_n_rows_of_each_input_and_records_it(tmp_path, tiny_model_dir):
    text = write_rows(tmp_path / "text.jsonl", text_rows())  # 16 rows
    chat = write_rows(tmp_path / "chat.jsonl", chat_rows()[:6])  # 6 rows

    def run(out, *extra):
        args = precompute_args(text, tiny_model_dir, tmp_path / out, "--data", str(chat), *extra)
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return tmp_path / out

    sampled = run("s0", "--max-samples", "5")
    ids = cache_ids(sampled)
    assert len(ids) == 10
    assert sum(i.startswith("text.jsonl:") for i in ids) == 5 and sum(i.startswith("chat.jsonl:") for i in ids) == 5
    content = json.loads((sampled / "manifest.json").read_text())["content"]
    assert content["max_samples"]["rows_per_input"] == 5
    again = run("s0-again", "--max-samples", "5")
    assert sorted(cache_ids(again)) == sorted(ids)
    other_seed = run("s1", "--max-samples", "5", "--seed", "1")
    assert sorted(cache_ids(other_seed)) != sorted(ids)
    whole = run("all")
    whole_manifest = json.loads((whole / "manifest.json").read_text())
    assert "max_samples" not in whole_manifest["content"] and len(cache_ids(whole)) == 22
    assert whole_manifest["fingerprint"] != json.loads((sampled / "manifest.json").read_text())["fingerprint"]


def test_a_folder_entry_of_dataset_info_is_one_dataset_for_max_samples(tmp_path, tiny_model_dir):
    """LLaMA-Factory loads a folder entry's files as one dataset and keeps max_samples rows of
    it; before, each file kept its own N (2N here). A --data file given beside it is its own."""
    folder = tmp_path / "info" / "parts"
    folder.mkdir(parents=True)
    rows = text_rows()  # 16 rows: 8 in each part
    write_rows(folder / "part-1.jsonl", rows[:8])
    write_rows(folder / "part-2.jsonl", rows[8:])
    (tmp_path / "info" / "dataset_info.json").write_text(json.dumps({"parts": {"file_name": "parts"}}))
    own = write_rows(tmp_path / "chat.jsonl", chat_rows()[:6])

    def run(out: str, *extra: str):
        args = [
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / out),
            "--dataset",
            "parts",
            "--dataset-dir",
            str(tmp_path / "info"),
            "--max-length",
            "64",
            *extra,
        ]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return tmp_path / out

    ids = cache_ids(run("folder", "--max-samples", "5"))
    assert len(ids) == 5 and {i.split(":")[0] for i in ids} <= {"part-1.jsonl", "part-2.jsonl"}, ids
    beside = cache_ids(run("beside", "--max-samples", "5", "--data", str(own)))
    assert len(beside) == 10 and sum(i.startswith("chat.jsonl:") for i in beside) == 5, beside
    content = json.loads((tmp_path / "folder" / "manifest.json").read_text())["content"]
    assert content["max_samples"]["spans"] == [2] and "per dataset" in content["max_samples"]["rule"]
