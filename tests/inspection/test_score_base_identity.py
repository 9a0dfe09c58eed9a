"""kto-inspect score --model RUN/final (LoRA adapters) put the adapters on whatever base
--base-model, or the adapter_config.json's base resolved from the working directory, named:
another model than the run trained on scored, with only a note line, rewards silently wrong. The
run's record holds derived.model_identity of the base its adapters were trained on; a base of
another identity is refused in one line, before scoring. Adapters from no run keep the note."""

import os
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import make_tiny_llama, run_train

from kto.formats.errors import InputError
from kto.formats.runrecord import write_run_config
from kto.inspection.cli import main


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_cache, tiny_model_dir, tokenizer_dir):
    """(root, run, other): a LoRA run `root/L` trained on `root/tiny` (named relatively, as its
    adapter_config.json then names it), and `other`, a tiny model of another seed."""
    root = tmp_path_factory.mktemp("lora-run")
    shutil.copytree(tiny_model_dir, root / "tiny")
    here = os.getcwd()
    os.chdir(root)  # --model tiny, relative: the base the adapters name is resolved from the working directory
    try:
        args = ("--batch-size", "2", "--lr", "1e-2", "--lora-r", "4", "--lora-alpha", "8", "--max-steps", "4", "--save-every", "2", "--merge-adapters")
        result = run_train(tiny_cache, "tiny", "L", *args)
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    other = make_tiny_llama(tmp_path_factory.mktemp("other") / "tiny", tokenizer_dir, seed=1)
    return root, root / "L", other


def score(*args):
    return CliRunner().invoke(main, ["score", *map(str, args), "--batch-tokens", "64"])


def error_line(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.output.strip().splitlines()[-1]


def test_adapters_on_another_base_model_are_refused(lora_run, tiny_cache, tmp_path):
    root, run, other = lora_run
    out = tmp_path / "s.parquet"
    for adapters in (run / "final", run / "checkpoint-2"):
        line = error_line(score(tiny_cache, "--model", adapters, "--base-model", other, "--out", out))
        assert line == (
            f"kto-inspect: error: --base-model {other}: not the model the run {run} trained its adapters on "
            f"(its record {run / 'kto_run.json'} names tiny); give that model"
        )
    assert not out.exists()


def test_a_relative_base_that_resolves_to_another_model_is_refused(lora_run, tiny_cache, tmp_path, monkeypatch):
    root, run, other = lora_run
    shutil.copytree(other, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)  # here `tiny`, the base adapter_config.json names, is the other model
    line = error_line(score(tiny_cache, "--model", run / "final", "--out", tmp_path / "s.parquet"))
    assert line == (
        f"kto-inspect: error: --model {run / 'final'}: the base its adapter_config.json names, tiny: not the model the run {run} "
        f"trained its adapters on (its record {run / 'kto_run.json'} names tiny); give that model as --base-model"
    )


def test_the_runs_base_anywhere_scores(lora_run, tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """The identity leaves paths out: the run's base from its own folder, or a copy elsewhere."""
    root, run, other = lora_run
    monkeypatch.chdir(root)
    plain = score(tiny_cache, "--model", run / "final", "--out", tmp_path / "a.parquet")
    assert plain.exit_code == 0, plain.output
    copied = score(tiny_cache, "--model", run / "final", "--base-model", tiny_model_dir, "--out", tmp_path / "b.parquet")
    assert copied.exit_code == 0, copied.output
    a, b = (pq.read_table(tmp_path / n).column("reward").to_numpy() for n in ("a.parquet", "b.parquet"))
    assert np.array_equal(a, b) and np.abs(a).max() > 1e-3


def test_adapters_of_no_run_keep_the_note(lora_run, tiny_cache, tmp_path):
    """No record to say what they were trained on: the user's --base-model, said on stderr."""
    root, run, other = lora_run
    loose = shutil.copytree(run / "final", tmp_path / "loose")
    result = score(tiny_cache, "--model", loose, "--base-model", other, "--out", tmp_path / "s.parquet")
    assert result.exit_code == 0, result.output
    assert f"note: scoring {other} with the LoRA adapters of {loose}" in result.stderr


def test_base_model_with_a_whole_model_is_refused(lora_run, tiny_cache, tiny_model_dir, tmp_path):
    root, run, other = lora_run
    for model in (run / "final-merged", tiny_model_dir):
        line = error_line(score(tiny_cache, "--model", model, "--base-model", other, "--out", tmp_path / "s.parquet"))
        assert line == f"kto-inspect: error: --base-model is for LoRA adapters or an FSDP checkpoint; --model {model} is a whole model"


def test_an_fsdp_checkpoint_on_another_model_is_refused(tiny_model_dir, tokenizer_dir, tmp_path):
    """A full fine-tune's FSDP checkpoint takes its architecture and config from the base."""
    from kto.formats.compute.identity import model_identity
    from kto.formats.compute.policy_dirs import policy_to_load
    from kto.formats.compute.sources import resolve_source

    run = tmp_path / "run"
    (run / "checkpoint-2" / "sharded").mkdir(parents=True)
    write_run_config(run, {"model": str(tiny_model_dir)}, {"model_identity": model_identity(resolve_source(str(tiny_model_dir)))})
    other = make_tiny_llama(tmp_path / "other", tokenizer_dir, tie_word_embeddings=True)
    ckpt = str(run / "checkpoint-2")
    assert policy_to_load(ckpt, str(tiny_model_dir)).source.directory == tiny_model_dir.resolve()
    said = f"not the model the run {run} trained (its record {run / 'kto_run.json'} names"
    with pytest.raises(InputError, match="^" + re.escape(f"--base-model {other}: {said} {tiny_model_dir}); give that model") + "$"):
        policy_to_load(ckpt, str(other))
    # The run's --model, another model now than it trained on (its record says so): refused too.
    write_run_config(run, {"model": str(other)}, {"model_identity": model_identity(resolve_source(str(tiny_model_dir)))})
    with pytest.raises(
        InputError, match="^" + re.escape(f"--model {ckpt}: its run's --model, {other}: {said} {other}); give that model as --base-model") + "$"
    ):
        policy_to_load(ckpt, None)


def test_the_same_weights_reached_another_way_are_the_runs_model():
    """A run trained from a hub id and scored on a local copy of its files (or the reverse, or a
    newer commit that left the weights alone), or from a .gguf since renamed: the identities
    differ in the hub revision or the file's name only, and the check lets them score."""
    from kto.formats.compute.policy_dirs import same_weights

    weights = {"size": 10, "header_sha256": "h", "sampled_sha256": "s"}
    local = {"config": "c", "weights": {"model.safetensors": weights}}
    hub = {**local, "hub_revision": "abc123"}
    assert same_weights(local, hub) and same_weights(hub, {**local, "hub_revision": "def456"})
    gguf = {"weights": {"SmolLM2.Q4_1.gguf": {"size": 10, "sha256": "x"}}}
    assert same_weights(gguf, {"weights": {"renamed.gguf": {"size": 10, "sha256": "x"}}})
    assert not same_weights(gguf, {"weights": {"renamed.gguf": {"size": 10, "sha256": "y"}}})
    assert not same_weights(local, {**local, "config": "other"})


def test_a_hub_id_and_a_local_copy_of_its_files_are_one_model_to_the_cache_checks():
    """same_model (the step-0 check's `scored_with`, an eval cache against the training cache,
    --resume): a cache scored from a hub id and a policy given as a local copy of its files were
    'not the cache's reference', and the step-0 check was skipped. A hub revision that one side
    lacks is not compared; two revisions still are (same_weights is the looser check)."""
    from kto.formats.manifest import same_model

    local = {"config": "c", "weights": {"model.safetensors": {"size": 10, "header_sha256": "h", "sampled_sha256": "s"}}}
    hub = {**local, "hub_revision": "abc123"}
    assert same_model(local, hub) and same_model(hub, local) and same_model(hub, dict(hub))
    assert not same_model(hub, {**local, "hub_revision": "def456"})
    assert not same_model(hub, {**local, "config": "d"})
