"""kto-inspect score --model RUN/checkpoint-STEP of an FSDP run (no config.json, the weights in
sharded/*.distcp; under LoRA, adapter_config.json beside them): the shards are read into this
one process, and the scores equal those of the same weights saved plainly (final/).

One torchrun launch makes two pairs of FSDP runs, a full fine-tune and LoRA (a launch costs
most of the time, so the test checks both): `short` ends at step 2 (final/ holds step 2's
weights, a HF directory or a PEFT adapter directory); `long` goes on to step 4 and saves
checkpoint-2 (DCP shards) on its way. With a constant learning rate their first two steps are
the same, so long's checkpoint-2 and short's final/ hold the same weights."""

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import torchrun
from export_checks import check_full_export, check_lora_export

from kto.formats.compute.sources import resolve_source
from kto.formats.errors import InputError
from kto.inspection.cli import main

RUNS = """
    import json, sys
    from pathlib import Path

    import kto.train
    from kto.train.config import TrainConfig

    cache, model, pairs = sys.argv[1:4]
    for short, long, extra in json.loads(pairs):
        common = dict(cache=Path(cache), model=model, batch_size=2, lr=1e-2, log_every=1, lr_schedule="constant", fsdp=True, **extra)
        kto.train.run(TrainConfig(out=Path(short), max_steps=2, **common))
        kto.train.run(TrainConfig(out=Path(long), max_steps=4, save_every=2, **common))
"""


def fsdp_runs(cache, model, tmp_path, extras: dict[str, dict]) -> dict[str, tuple[Path, Path]]:
    """{name: (short, long)}: the two runs of the module docstring for each of `extras` (name:
    TrainConfig keywords), all in one torchrun launch."""
    script = tmp_path / "runs.py"
    script.write_text(textwrap.dedent(RUNS))
    runs = {name: (tmp_path / name / "short", tmp_path / name / "long") for name in extras}
    plan = json.dumps([(str(short), str(long), extras[name]) for name, (short, long) in runs.items()])
    torchrun(str(script), str(cache), str(model), plan, timeout=600)
    for _, long in runs.values():
        assert (long / "checkpoint-2" / "sharded" / ".metadata").is_file() and not list((long / "checkpoint-2").glob("*.safetensors"))
    return runs


def score(cache, model, out, *extra) -> dict:
    result = CliRunner().invoke(main, ["score", str(cache), "--model", str(model), "--out", str(out), "--batch-tokens", "64", *map(str, extra)])
    assert result.exit_code == 0, result.output
    return pq.read_table(out).to_pydict() | {"stderr": result.stderr}


def assert_same_scores(sharded: dict, plain: dict) -> None:
    assert sharded["id"] == plain["id"]
    assert np.array_equal(sharded["policy_logp"], plain["policy_logp"]) and np.array_equal(sharded["reward"], plain["reward"])
    assert np.abs(plain["reward"]).max() > 1e-3  # the policy trained: these are not the reference's scores


@pytest.mark.distributed
def test_score_reads_fsdp_checkpoints_sharded_weights_and_lora_adapters(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    """One test, so that pytest-xdist makes the launch once: the full fine-tune's checks, then
    LoRA's."""
    runs = fsdp_runs(tiny_cache, tiny_model_dir, tmp_path, {"full": {}, "lora": {"lora_r": 4}})
    check_sharded_weights(tiny_cache, tiny_model_dir, tmp_path / "full", *runs["full"])
    check_sharded_lora_adapters(tiny_cache, tmp_path / "lora", *runs["lora"])
    # kto-inspect export of the same checkpoints (tests/export_checks.py), on this one launch.
    check_full_export(tiny_eval_cache, tmp_path / "full", *runs["full"])
    check_lora_export(tiny_eval_cache, tmp_path / "lora", *runs["lora"])


def check_sharded_weights(tiny_cache, tiny_model_dir, tmp_path, short, long) -> None:
    ckpt = long / "checkpoint-2"
    sharded = score(tiny_cache, ckpt, tmp_path / "sharded.parquet")
    assert f"note: scoring the weights of {ckpt} (sharded by FSDP)" in sharded["stderr"]
    assert_same_scores(sharded, score(tiny_cache, short / "final", tmp_path / "plain.parquet"))
    # Outside its run (no kto_run.json to name the model it trained): --base-model, else one line.
    alone = tmp_path / "alone" / "checkpoint-2"
    shutil.copytree(ckpt, alone)
    result = CliRunner().invoke(main, ["score", str(tiny_cache), "--model", str(alone), "--out", str(tmp_path / "a.parquet")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith(f"kto-inspect: error: --model {alone}: an FSDP checkpoint (its weights are sharded in sharded/*.distcp)")
    )
    assert_same_scores(score(tiny_cache, alone, tmp_path / "alone.parquet", "--base-model", tiny_model_dir), sharded)
    # Where a model directory is expected (kto-precompute, kto-train): one line that says what it is.
    with pytest.raises(InputError, match=r"an FSDP checkpoint \(its weights are sharded in sharded/\*\.distcp\), not a model directory"):
        resolve_source(str(ckpt))


def check_sharded_lora_adapters(tiny_cache, tmp_path, short, long) -> None:
    ckpt = long / "checkpoint-2"
    assert (ckpt / "adapter_config.json").is_file() and (short / "final" / "adapter_model.safetensors").is_file()
    sharded = score(tiny_cache, ckpt, tmp_path / "sharded.parquet")
    assert f"with the LoRA adapters (sharded by FSDP) of {ckpt}" in sharded["stderr"]
    assert_same_scores(sharded, score(tiny_cache, short / "final", tmp_path / "plain.parquet"))
