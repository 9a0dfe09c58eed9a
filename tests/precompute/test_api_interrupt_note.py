"""kto.precompute.run interrupted (a notebook's interrupt button, found by a hunt): a bare
KeyboardInterrupt from deep in the scoring said nothing of what was kept or how to go on, where
the CLI says "finished shards are kept; run the same command again to resume". The API leaves
SIGINT to its host, so the interrupt is raised as it came, with that said in a note; and the
same call does resume."""

import pytest
from conftest import text_rows, write_rows

import kto.precompute
import kto.precompute.pipeline as pipeline
from kto.precompute.config import PrecomputeConfig


def test_an_interrupt_says_what_is_kept_and_the_same_call_resumes(tmp_path, tiny_model_dir, monkeypatch, capsys):
    config = PrecomputeConfig(
        data=(write_rows(tmp_path / "d.jsonl", text_rows()),),
        model=str(tiny_model_dir),
        out=tmp_path / "cache",
        max_length=64,
        batch_tokens=256,
        rows_per_shard=4,
    )
    real, calls = pipeline.score_and_write, []

    def interrupted_after_one_shard(s, shard_ids, *args, **kwargs):
        calls.append(list(shard_ids))
        real(s, shard_ids[:1], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "score_and_write", interrupted_after_one_shard)
    with pytest.raises(KeyboardInterrupt) as caught:
        kto.precompute.run(config)
    assert caught.value.__notes__ == [f"kto.precompute.run was interrupted: the same call goes on with {config.out}, from the shards it finished (kept) if any"]
    monkeypatch.setattr(pipeline, "score_and_write", real)
    capsys.readouterr()
    result = kto.precompute.run(config)
    assert "resuming: 1 of 4 train shards (4 rows) kept from an earlier run" in capsys.readouterr().err
    assert result.counts.rows == len(text_rows())
