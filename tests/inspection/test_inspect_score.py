"""kto-inspect score: the reference scores reward 0; another policy gives β·(log πθ − log πref)."""

import json
import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import tampered_copy

import kto.formats
from kto.formats.manifest import read_manifest
from kto.inspection.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_reference_model_scores_zero_reward(tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "ref.parquet"
    result = invoke("score", tiny_cache, "--model", tiny_model_dir, "--out", out, "--batch-tokens", "64")
    assert result.exit_code == 0, result.output
    assert "note: --model is the cache's reference model" in result.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "label", "policy_logp", "ref_logp", "reward"]
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["kto.cache_fingerprint"] == read_manifest(tiny_cache).fingerprint and meta["kto.beta"] == "0.1"
    assert table.column("id").to_pylist() == kto.formats.scan(tiny_cache).collect()["id"].to_list()
    s = table.to_pydict()
    # Same batching and log-prob code as kto-precompute: equal up to float32 rounding.
    assert np.allclose(s["policy_logp"], s["ref_logp"], rtol=0, atol=1e-3)
    assert np.abs(s["reward"]).max() < 1e-4
    assert "of 8 gained log-prob" in result.stdout and "of 8 lost log-prob" in result.stdout
    assert f"wrote {out}" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--beta", "0"], "--beta 0.0: must be a finite positive number"),
        (["--beta", "inf"], "--beta inf: must be a finite positive number"),  # wrote rewards of inf (nan for the reference)
        (["--batch-tokens", "0"], "--batch-tokens 0: must be positive"),
        (["--out", "{cache}/scores.parquet"], "--out {cache}/scores.parquet: inside the cache directory"),
        (["--out", "{tmp}/no/such/dir/s.parquet"], "--out {tmp}/no/such/dir/s.parquet: directory {tmp}/no/such/dir does not exist"),
        (["--out", "{cache}/tokenizer/tokenizer.json"], "--out {cache}/tokenizer/tokenizer.json: inside the cache directory"),
        (["--out", "{tmp}/mine.jsonl"], "--out {tmp}/mine.jsonl: exists and is not a file kto-inspect score wrote"),
        (["--model", "{tmp}/nope"], "--model {tmp}/nope: no such file or directory"),
        # Past the filesystem's 255 bytes: was a traceback (ENAMETOOLONG from os.stat).
        (["--out", "{tmp}/" + "s" * 300 + ".parquet"], "--out {tmp}/" + "s" * 300 + ".parquet: cannot write (File name too long); choose a shorter name"),
    ],
)
def test_bad_flags(tiny_cache, tiny_model_dir, tmp_path, args, message):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    fill = lambda s: s.format(cache=cache, tmp=tmp_path)
    base = {"--model": str(tiny_model_dir), "--out": str(tmp_path / "s.parquet")}
    flags = dict(zip(args[::2], map(fill, args[1::2])))
    (tmp_path / "mine.jsonl").write_text('{"a user": "file"}\n')
    argv = ["score", str(cache)] + [x for k, v in {**base, **flags}.items() for x in (k, v)]
    before = {p: p.read_bytes() for p in [*cache.rglob("*"), tmp_path / "mine.jsonl"] if p.is_file()}
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"kto-inspect: error: {fill(message)}")
    assert all(p.read_bytes() == b for p, b in before.items())  # nothing of the user's or the cache's replaced


def test_out_inside_a_run_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    """Seen in an attack: scores.parquet written into a run directory made its next --resume
    refuse the run ("holds scores.parquet, which kto-train did not write")."""
    from kto.formats.runrecord import write_run_config

    (tmp_path / "run").mkdir()
    write_run_config(tmp_path / "run", {}, {})
    result = invoke("score", tiny_cache, "--model", tiny_model_dir, "--out", tmp_path / "run" / "s.parquet")
    assert result.exit_code == 2 and f"--out {tmp_path / 'run' / 's.parquet'}: inside the kto-train run {tmp_path / 'run'}" in result.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["kto_run.json"]


def test_rescoring_replaces_its_own_file_only(tiny_cache, tiny_model_dir, tmp_path):
    out = tmp_path / "s.parquet"
    for beta in ("0.1", "0.5"):
        result = invoke("score", tiny_cache, "--model", tiny_model_dir, "--out", out, "--batch-tokens", "64", "--beta", beta)
        assert result.exit_code == 0, result.output
    assert pq.read_schema(out).metadata[b"kto.beta"] == b"0.5"
    pq.write_table(pq.read_table(out).replace_schema_metadata({}), tmp_path / "other.parquet")  # same columns, not ours
    result = invoke("score", tiny_cache, "--model", tiny_model_dir, "--out", tmp_path / "other.parquet")
    assert result.exit_code == 2 and "is not a file kto-inspect score wrote" in result.stderr


def test_tampered_shard_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    cache = tampered_copy(tiny_cache, tmp_path / "cache")
    path = cache / "shard-00001.arrow"
    result = invoke("score", cache, "--model", tiny_model_dir, "--out", tmp_path / "s.parquet")
    assert result.exit_code == 2
    assert f"{path}: sha256" in result.stderr and "kto-inspect verify" in result.stderr
    assert not (tmp_path / "s.parquet").exists()


def test_dtype_choices_follow_formats_numerics():
    from kto.formats.compute.numerics import NAMES
    from kto.inspection.cli import NUMERICS

    assert NUMERICS == NAMES


def test_final_merged_is_read_as_its_runs_model(tmp_path):
    """Seen in a review: `score --model RUN/final-merged` took β 0.1 where RUN/final of the same
    run took the run's β (0.5 there), so one run's two outputs gave rewards 5× apart."""
    from kto.formats.runrecord import run_of_model_dir, write_run_config

    run = tmp_path / "run"
    for name in ("final", "final-merged", "checkpoint-3", "elsewhere"):
        (run / name).mkdir(parents=True)
    write_run_config(run, {}, {})
    assert [run_of_model_dir(run / n) for n in ("final", "final-merged", "checkpoint-3", "elsewhere")] == [run, run, run, None]


def test_a_missing_base_is_named_by_where_it_came_from(tmp_path, monkeypatch):
    """An adapter's base read from its adapter_config.json, not found, was reported as
    `--base-model X: no such file or directory`, a flag the user never passed."""
    import json

    from kto.formats.compute.policy_dirs import policy_to_load
    from kto.formats.errors import InputError

    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "./no-such-base"}))
    monkeypatch.chdir(tmp_path)
    said = "--model final: the base its adapter_config.json names, ./no-such-base: no such file or directory"
    with pytest.raises(InputError, match="^" + re.escape(f"{said}; give the model the adapters were trained on as --base-model") + "$"):
        policy_to_load("final", None)
    with pytest.raises(InputError, match=r"^--base-model ./other: no such file or directory$"):
        policy_to_load("final", "./other")


def test_an_adapter_folder_without_a_tokenizer_is_scored_with_its_bases(tiny_cache, tiny_model_dir, tmp_path):
    """peft's save_pretrained writes no tokenizer (most adapters on the Hub hold none): score
    ended in "cannot load tokenizer (ValueError: Couldn't instantiate the backend tokenizer...)".
    Zero adapters (B = 0) are the base itself: every reward 0."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    assert not list(adapter.glob("tokenizer*"))
    out = tmp_path / "s.parquet"
    result = invoke("score", tiny_cache, "--model", adapter, "--base-model", tiny_model_dir, "--out", out, "--batch-tokens", "64")
    assert result.exit_code == 0, result.output
    assert np.abs(pq.read_table(out).column("reward").to_numpy()).max() < 1e-4


def test_an_adapters_gguf_base_is_the_file_the_run_trained_on(tmp_path, monkeypatch):
    """peft names a GGUF base by its folder; in a folder also holding a safetensors model (as
    llama.cpp's converter leaves it) or other .gguf files, score loaded another model than the
    one trained on, silently. The run's record names the file."""
    from kto.formats.compute.policy_dirs import base_of
    from kto.formats.runrecord import write_run_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    for name in ("config.json", "model.safetensors", "A.gguf", "X.gguf"):
        (tmp_path / "m" / name).write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(run, {"model": "m/X.gguf"}, {})
    (run / "final").mkdir()
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "m", "peft_type": "LORA"}))
    assert base_of(run / "final", None) == "m/X.gguf"
    assert base_of(run / "final", "m/A.gguf") == "m/A.gguf"  # --base-model wins
    write_run_config(run, {"model": "elsewhere/X.gguf"}, {})  # another folder than the adapter names: the adapter's
    assert base_of(run / "final", None) == "m"


def _read_only_below(folder, monkeypatch):
    """Fake a read-only mount at `folder` (root ignores a chmod; a real mount needs privileges):
    creating a file there fails with EROFS, and so does every unlink there, as on such a mount."""
    import errno
    import os
    from pathlib import Path

    def refused(path) -> bool:
        return Path(os.fsdecode(path)).parent == folder

    def erofs(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    real_open, real_unlink = os.open, Path.unlink

    def fake_open(path, *args, **kwargs):
        if refused(path):
            raise erofs(path)
        return real_open(path, *args, **kwargs)

    def fake_unlink(self, *args, **kwargs):
        if refused(self):
            raise erofs(self)
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(Path, "unlink", fake_unlink)


def test_a_read_only_out_folder_is_refused_before_scoring(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """Seen: `--out ro/s.parquet` on a read-only mount scored the whole cache, then ended in an
    OSError traceback (exit 1) from the temp file's cleanup. Now one line naming --out, first."""
    import kto.inspection.score as score

    (tmp_path / "ro").mkdir()
    _read_only_below(tmp_path / "ro", monkeypatch)
    monkeypatch.setattr(score._Scorer, "load", lambda *a, **kw: pytest.fail("loaded the model before refusing --out"))
    out = tmp_path / "ro" / "s.parquet"
    result = invoke("score", tiny_cache, "--model", tiny_model_dir, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"kto-inspect: error: --out {out}: cannot write (Read-only file system); choose a writable location\n"
    assert list((tmp_path / "ro").iterdir()) == []


def test_a_write_refused_after_the_check_is_one_line(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """The folder turns read-only while scoring (a remount after a disk error): pyarrow's EROFS,
    and the cleanup's own EROFS after it, become one line naming the file, not a traceback."""
    import errno

    import pyarrow.parquet

    import kto.inspection.score as score

    (tmp_path / "ro").mkdir()
    out = tmp_path / "ro" / "s.parquet"
    monkeypatch.setattr(score, "check_can_create", lambda path: None, raising=False)
    _read_only_below(tmp_path / "ro", monkeypatch)

    def pyarrow_refuses(table, where, **kw):
        raise OSError(errno.EROFS, f"Failed to open local file '{where}'. Detail: [errno 30] Read-only file system")

    monkeypatch.setattr(pyarrow.parquet, "write_table", pyarrow_refuses)
    result = invoke("score", tiny_cache, "--model", tiny_model_dir, "--out", out, "--batch-tokens", "64")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == f"kto-inspect: error: {out}: cannot write (Read-only file system); choose a writable location"
    assert list((tmp_path / "ro").iterdir()) == []


def test_score_summary_means_each_labels_own_rewards():
    """kto-inspect score's summary by hand: labels T, F, F with rewards 0.2, -0.1, -0.3 and policy
    minus reference log-probs of the same sign: desirable mean 0.2, undesirable mean -0.2 (not
    the mean of every row, -0.0667, which a mutation hunt found no test told apart)."""
    import pyarrow as pa

    from kto.inspection.score import summarize_scores

    table = pa.table({"label": [True, False, False], "reward": [0.2, -0.1, -0.3], "policy_logp": [-1.0, -3.0, -5.0], "ref_logp": [-3.0, -2.0, -2.0]})
    s = summarize_scores(table)
    assert s["desirable"] == {"rows": 1, "gained": 1, "mean_reward": 0.2}
    assert s["undesirable"]["rows"] == 2 and s["undesirable"]["lost"] == 2 and abs(s["undesirable"]["mean_reward"] + 0.2) < 1e-15
