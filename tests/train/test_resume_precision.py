"""--mixed-precision on --resume: the record keeps the precision in force (derived
mixed_precision_in_force), and a resume compares what is in force, not the words. `auto` is bf16
autocast on CUDA and none on CPU, so a run begun on one and resumed on the other would silently
switch precision; the GPU side is simulated on CPU by making the resolution say bf16, as
accelerate then autocasts in bf16 on CPU too."""

import json
import shutil

import pytest
from conftest import metrics, train_error_line
from test_loop import train_cli

RUN = ("--max-steps", "2", "--save-every", "1")


def record(word: str, in_force: str | None) -> dict:
    """A run record's two parts, with the precision as given (`word`) and, in a record made since
    it was recorded, in force (None: a record made before)."""
    derived = {"total_steps": 2, "cache_fingerprint": "f" * 64}
    if in_force is not None:
        derived["mixed_precision_in_force"] = in_force
    return {"config": {"beta": 0.1, "mixed_precision": word}, "derived": derived}


def test_a_resume_compares_the_precision_in_force_not_the_words():
    from kto.train.resume_record import keep_recorded, record_differences, settings_digest

    saved = record("auto", "no")  # begun on CPU
    assert record_differences(saved, record("no", "no")) == []
    assert record_differences(saved, record("auto", "no")) == []
    (line,) = record_differences(saved, record("auto", "bf16"))  # resumed on a GPU
    assert line == "mixed_precision (auto meaning no there, auto meaning bf16 now: auto is bf16 autocast on CUDA, none on CPU)"
    (line,) = record_differences(record("bf16", "bf16"), record("auto", "no"))
    assert line == "mixed_precision (bf16 there, auto meaning no now: auto is bf16 autocast on CUDA, none on CPU)"
    assert record_differences(record("bf16", "bf16"), record("no", "no")) == ["mixed_precision (bf16 there, no now)"]
    # Accepted under other words, the record keeps the run's own, and so its checkpoints' digest.
    now = record("no", "no")
    keep_recorded(now, saved)
    assert now == saved and settings_digest(now) == settings_digest(saved)
    assert settings_digest(record("auto", "bf16")) != settings_digest(saved)


def test_a_record_made_before_the_precision_in_force_resumes_as_it_did():
    """No mixed_precision_in_force there: the words are compared as before, and the record (and
    the digest its checkpoints carry) stays without the key."""
    from kto.train.resume_record import keep_recorded, record_differences, settings_digest

    old = record("auto", None)
    assert record_differences(old, record("auto", "bf16")) == []  # what auto meant there is not known
    assert record_differences(old, record("no", "no")) == ["mixed_precision (auto there, no now)"]
    now = record("auto", "no")
    keep_recorded(now, old)
    assert now == old and settings_digest(now) == settings_digest(old)


@pytest.fixture(scope="module")
def cpu_run(tiny_cache, tiny_model_dir, tmp_path_factory):
    """2 steps on CPU with --mixed-precision auto (so no autocast), a checkpoint after each."""
    out = tmp_path_factory.mktemp("precision") / "r"
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN)
    assert result.exit_code == 0, result.output
    return out


def test_the_record_says_the_precision_in_force(cpu_run):
    saved = json.loads((cpu_run / "kto_run.json").read_text())
    assert saved["config"]["mixed_precision"] == "auto" and saved["derived"]["mixed_precision_in_force"] == "no"


def test_auto_resumed_where_it_means_bf16_is_refused_in_one_line(cpu_run, tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """As on a GPU: `auto` now resolves to bf16. Refused before anything is written."""
    import kto.train.setup as setup

    out = tmp_path / "r"
    shutil.copytree(cpu_run, out)
    before = (out / "kto_run.json").read_bytes()
    real = setup.mixed_precision_in_force
    monkeypatch.setattr(setup, "mixed_precision_in_force", lambda cfg: "bf16" if cfg.mixed_precision == "auto" else real(cfg))
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", "checkpoint-1")
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert "mixed_precision (auto meaning no there, auto meaning bf16 now: auto is bf16 autocast on CUDA, none on CPU)" in line
    assert line.endswith("; pass --mixed-precision no to resume in the precision the run trained with"), line
    assert (out / "kto_run.json").read_bytes() == before and (out / "checkpoint-2").is_dir()


def test_auto_resumed_as_the_no_it_meant_continues_the_run(cpu_run, tiny_cache, tiny_model_dir, tmp_path):
    """`--mixed-precision no` where the run recorded `auto`, which meant no here: the same run,
    whose checkpoint (settings digest included) resumes and retrains step 2 to the same loss."""
    out = tmp_path / "r"
    shutil.copytree(cpu_run, out)
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", "checkpoint-1", "--mixed-precision", "no")
    assert result.exit_code == 0, result.output
    assert "mixed precision no" in result.output  # the resume says the precision it runs in
    assert [m["loss"] for m in metrics(out)] == [m["loss"] for m in metrics(cpu_run)]
    saved = json.loads((out / "kto_run.json").read_text())
    assert saved["config"]["mixed_precision"] == "auto" and saved["derived"]["mixed_precision_in_force"] == "no"


def test_a_run_recorded_without_the_precision_in_force_still_resumes(tiny_cache, tiny_model_dir, tmp_path, monkeypatch):
    """A run made before the key (its checkpoints' settings digest hashes none) resumes as it
    did, and its record stays without the key."""
    import kto.train.setup as setup

    real = setup.derived_record
    monkeypatch.setattr(setup, "derived_record", lambda *a: {k: v for k, v in real(*a).items() if k != "mixed_precision_in_force"})
    out = tmp_path / "r"
    assert train_cli(tiny_cache, tiny_model_dir, out, *RUN).exit_code == 0
    monkeypatch.setattr(setup, "derived_record", real)
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", "checkpoint-1")
    assert result.exit_code == 0, result.output
    assert "this run computes in fp32 (--dtype fp32, mixed precision no (auto here))" in result.output
    assert "mixed_precision_in_force" not in json.loads((out / "kto_run.json").read_text())["derived"]


@pytest.mark.parametrize(
    ("cache", "run", "dtype", "mixed", "device", "ways"),
    [
        ("fp32", "amp-bf16", "fp32", "bf16", "cuda", " (kto-train --mixed-precision no, or kto-precompute --dtype amp-bf16 for a new cache)"),
        ("amp-bf16", "fp32", "fp32", "no", "cpu", " (kto-train --mixed-precision bf16, or kto-precompute --dtype fp32 for a new cache)"),
        ("bf16", "fp32", "fp32", "no", "cpu", " (kto-train --dtype bf16, or kto-precompute --dtype fp32 for a new cache)"),
        (
            "amp-fp16",
            "fp32",
            "fp32",
            "no",
            "cpu",
            " (kto-train --mixed-precision fp16 on a GPU (it runs no fp16 autocast on CPU), or kto-precompute --dtype fp32 for a new cache)",
        ),
        ("amp-bf16", "bf16", "bf16", "no", "cpu", " (kto-train --dtype fp32 --mixed-precision bf16, or kto-precompute --dtype bf16 for a new cache)"),
        ("fp32", "bf16+amp-fp16", "bf16", "fp16", "cuda", " (kto-train --dtype fp32 --mixed-precision no)"),  # no kto-precompute --dtype says that mix
    ],
)
def test_the_drift_refusal_names_the_flags_that_match_the_numerics(cache, run, dtype, mixed, device, ways):
    from kto.train.loop import ways_to_match

    assert ways_to_match(cache, run, dtype, mixed, device) == ways


def test_a_run_trained_in_fp16_resumed_without_cuda_is_sent_to_a_gpu_by_both_refusals(cpu_run, tiny_cache, tiny_model_dir, tmp_path):
    """Seen before: resumed on CPU with its --mixed-precision fp16, the refusal of fp16 on CPU
    said "give --mixed-precision bf16 or no"; given that, the resume refused another precision and
    said "pass --mixed-precision fp16". Each now says where it resumes: on CUDA."""
    out = tmp_path / "r"
    shutil.copytree(cpu_run, out)
    saved = json.loads((out / "kto_run.json").read_text())
    saved["config"]["mixed_precision"] = saved["derived"]["mixed_precision_in_force"] = "fp16"  # as a GPU run records it
    (out / "kto_run.json").write_text(json.dumps(saved))
    where = "it trained in fp16 autocast, which runs on CUDA only: resume it on a machine with CUDA (here, --mixed-precision bf16 or no make another run: another --out)"
    for given in ("fp16", "no", "bf16"):
        result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", "checkpoint-1", "--mixed-precision", given)
        assert result.exit_code == 2, result.output
        line = train_error_line(result.output)
        assert line.endswith(where), (given, line)
        assert "give --mixed-precision" not in line and "pass --mixed-precision" not in line, line
    # A record made before the precision in force was recorded says it by the word given.
    del saved["derived"]["mixed_precision_in_force"]
    (out / "kto_run.json").write_text(json.dumps(saved))
    for given in ("fp16", "no"):
        result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", "checkpoint-1", "--mixed-precision", given)
        assert train_error_line(result.output).endswith(where), (given, result.output)
    # A new run is told which precisions run here; the resume of a run that trained in fp32,
    # the one it trained in (bf16 would be refused as another).
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "new", *RUN, "--mixed-precision", "fp16")
    assert train_error_line(result.output).endswith("give --mixed-precision bf16 or no")
    shutil.copytree(cpu_run, tmp_path / "fp32")
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "fp32", *RUN, "--resume", "checkpoint-1", "--mixed-precision", "fp16")
    assert train_error_line(result.output).endswith("give --mixed-precision no, the run's own")


def test_the_record_keeps_the_versions_the_run_began_with_and_a_resume_on_others_says_so(cpu_run, tiny_cache, tiny_model_dir, tmp_path):
    """kto_run.json records kto's, torch's and transformers' versions (a reproduction needs them),
    beside `config` and `derived`, which a resume compares (an earlier kto compares every derived
    key: there it would refuse its own run). A resume on another install (simulated: the record
    says torch 2.0.0) is not refused, a cluster's image moves on, but says which changed, and the
    record keeps the run's own."""
    import torch
    import transformers

    saved = json.loads((cpu_run / "kto_run.json").read_text())
    assert saved["versions"]["torch"] == torch.__version__ and saved["versions"]["transformers"] == transformers.__version__
    assert "versions" not in saved["derived"] and saved["cwd"]
    out = tmp_path / "r"
    shutil.copytree(cpu_run, out)
    saved["versions"]["torch"] = "2.0.0"
    (out / "kto_run.json").write_text(json.dumps(saved))
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", "checkpoint-1")
    assert result.exit_code == 0, result.output
    assert (
        f"note: --resume: torch 2.0.0 -> {torch.__version__} since the run began; its steps from here may differ in the last bits from an uninterrupted run's"
    ) in result.output
    assert json.loads((out / "kto_run.json").read_text())["versions"]["torch"] == "2.0.0"
    assert "| trained with | kto-offline " in (out / "final" / "README.md").read_text() and "torch 2.0.0" in (out / "final" / "README.md").read_text()


@pytest.mark.parametrize("versions", [None, "2.0"])
def test_versions_not_as_kto_writes_them_are_replaced_by_this_runs(cpu_run, tiny_cache, tiny_model_dir, tmp_path, versions):
    """Seen in review: `versions` null, a list or a string stopped the resume with a TypeError, a
    string only after every step, in the model card (no final/). Such a record resumes without a
    note, and the record and the card take this process's versions."""
    import torch

    out = tmp_path / "r"
    shutil.copytree(cpu_run, out)
    saved = json.loads((out / "kto_run.json").read_text())
    (out / "kto_run.json").write_text(json.dumps({**saved, "versions": versions}))
    result = train_cli(tiny_cache, tiny_model_dir, out, *RUN, "--resume", "checkpoint-1")
    assert result.exit_code == 0, result.output
    assert "since the run began" not in result.output
    assert json.loads((out / "kto_run.json").read_text())["versions"]["torch"] == torch.__version__
    assert f"torch {torch.__version__}" in (out / "final" / "README.md").read_text()
