"""A missing, truncated or corrupt shard given to kto-train: one line naming the shard, exit 2,
and nothing written to --out before the start-up checks pass (it used to be a traceback, exit 1,
the truncated case without the file's name, and an empty metrics.jsonl that blocked a rerun)."""

import json

import pytest
from conftest import metrics, patch_shard_table, train_error_line, unverified_copy
from test_loop import train_cli


@pytest.fixture
def cache_copy(tiny_cache, tmp_path):
    return unverified_copy(tiny_cache, tmp_path / "cache")


def test_a_missing_shard_is_named_and_nothing_is_written(cache_copy, tiny_model_dir, tmp_path):
    (cache_copy / "shard-00002.arrow").unlink()
    result = train_cli(cache_copy, tiny_model_dir, tmp_path / "r", "--max-steps", "1")
    assert result.exit_code == 2
    assert "shard-00002.arrow" in train_error_line(result.output) and "missing" in result.output
    assert not (tmp_path / "r").exists()


def test_a_truncated_shard_is_named_and_nothing_is_written(cache_copy, tiny_model_dir, tmp_path):
    shard = cache_copy / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "r"
    out.mkdir()  # an existing, empty run directory stays empty
    result = train_cli(cache_copy, tiny_model_dir, out, "--max-steps", "1")
    assert result.exit_code == 2
    assert "shard-00001.arrow" in train_error_line(result.output)
    assert list(out.iterdir()) == []


def test_a_shard_with_fewer_rows_than_the_manifest_lists_is_named(cache_copy, tiny_model_dir, tmp_path):
    manifest = json.loads((cache_copy / "manifest.json").read_text())
    manifest["shards"][3]["rows"] += 1  # the shard list and counts are outside the fingerprinted content
    manifest["counts"]["rows"] += 1
    manifest["counts"]["desirable"] += 1  # the counts still add up: only the shard tells
    (cache_copy / "manifest.json").write_text(json.dumps(manifest))
    result = train_cli(cache_copy, tiny_model_dir, tmp_path / "r", "--max-steps", "1")
    assert result.exit_code == 2
    assert "shard-00003.arrow: 1 rows, the manifest says 2" in train_error_line(result.output)
    assert not (tmp_path / "r").exists()


def test_a_shard_with_an_extra_column_is_refused_before_out(cache_copy, tiny_model_dir, tmp_path):
    """Its sha256 patched into the manifest, a shard with an extra column used to train."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path = cache_copy / "shard-00002.arrow"
    table = ipc.open_file(pa.memory_map(str(path))).read_all()
    patch_shard_table(cache_copy, 2, table.append_column("note", pa.array(["x"] * table.num_rows)))
    result = train_cli(cache_copy, tiny_model_dir, tmp_path / "r", "--max-steps", "1")
    assert result.exit_code == 2
    assert f"{path}: extra column(s) 'note'" in train_error_line(result.output)
    assert not (tmp_path / "r").exists()


def test_a_shard_whose_sha256_differs_stops_with_one_line_when_first_read(tiny_cache, tiny_model_dir, tmp_path):
    from conftest import tampered_copy

    bad = tampered_copy(tiny_cache, tmp_path / "bad")  # the footer still reads: only the hash can tell
    result = train_cli(bad, tiny_model_dir, tmp_path / "r", "--max-steps", "8")
    assert result.exit_code == 2
    line = train_error_line(result.output)
    assert "shard-00001.arrow: sha256" in line and "does not match the manifest" in line
    assert not (tmp_path / "r" / "final").exists()


def test_a_start_that_failed_its_step0_check_does_not_block_the_next_run(tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "r"
    failed = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "1", "--dtype", "bf16", "--drift-tolerance", "1e-6")
    assert failed.exit_code == 2 and "step-0 log-probs differ" in failed.output
    again = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "1")
    assert again.exit_code == 0, again.output
    assert [m["step"] for m in metrics(out)] == [1]
