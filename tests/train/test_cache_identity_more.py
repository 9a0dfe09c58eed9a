"""More of what kto-train says of the cache it is given (test_cache_identity_checks.py has the
rest): which recorded input files it hashes at start-up, a cache whose tokenizer has no chat
template, a --model at the reference's path holding other weights now, --drift-tolerance on
resume, --resume by a checkpoint's bare name, and the eval split named through `.` or a link."""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from conftest import chat_rows, make_cache, make_tiny_llama, precompute_args, run_train, text_rows, train_error_line, write_rows

from kto.formats.files import sha256_file
from kto.formats.manifest import Manifest, read_manifest
from kto.precompute.cli import main as precompute

ONE_STEP = ("--max-steps", "1", "--batch-size", "2")


@pytest.fixture(scope="module")
def tiny2(tmp_path_factory, tokenizer_dir) -> Path:
    """Another tiny model of the same tokenizer: not the reference of tiny_cache."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny2"), tokenizer_dir, seed=1)


# ---- 1. which recorded input files are hashed ---------------------------------------------------


def naming(manifest: Manifest, *paths: Path) -> Manifest:
    """`manifest` recording `paths` as its input files (each of a made-up sha256), as a manifest
    someone else wrote could: info.data_paths is no part of the fingerprint."""
    inputs = tuple({"name": p.name, "sha256": "0" * 64} for p in paths)
    return replace(manifest, content=replace(manifest.content, inputs=inputs), info={**manifest.info, "data_paths": [str(p) for p in paths]})


def changed_within(manifest: Manifest, seconds: float = 20) -> list:
    """changed_inputs(manifest), failing the test (not hanging it) if it does not return."""
    from kto.train.eval_cache import changed_inputs

    answer: list = []
    worker = threading.Thread(target=lambda: answer.append(changed_inputs(manifest)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert answer, "changed_inputs did not return: it opened a file that blocks"
    return answer[0]


def test_a_fifo_named_as_an_input_is_not_read(tiny_cache, tmp_path):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    assert changed_within(naming(read_manifest(tiny_cache), fifo)) == []


def test_a_link_into_proc_is_not_read(tiny_cache, tmp_path):
    """/proc/kmsg is a 'regular file' that blocks its reader forever (as root): nothing under
    /proc, /sys or /dev is hashed, whatever link leads there."""
    link = tmp_path / "data.jsonl"
    link.symlink_to("/proc/self/status")
    assert changed_within(naming(read_manifest(tiny_cache), link)) == []


def test_only_files_kto_precompute_reads_are_hashed(tiny_cache, tmp_path):
    """A name kto-precompute would refuse (a .bin), or an empty file, made no cache: not hashed."""
    big = tmp_path / "weights.bin"
    big.write_bytes(b"x" * 100)
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert changed_within(naming(read_manifest(tiny_cache), big, empty)) == []


def test_a_linked_data_file_is_still_hashed(tiny_cache, tmp_path):
    real = tmp_path / "real.jsonl"
    write_rows(real, text_rows())
    link = tmp_path / "data.jsonl"
    link.symlink_to(real)
    assert changed_within(naming(read_manifest(tiny_cache), link)) == [(link, "0" * 64, sha256_file(real))]


def test_the_suffixes_are_kto_precomputes():
    from kto.formats.manifest import INPUT_SUFFIXES
    from kto.precompute.inputs.records import SUFFIXES

    assert sorted(INPUT_SUFFIXES) == sorted(SUFFIXES)


def test_a_cache_from_the_hub_names_no_file_to_hash(tiny_cache, tmp_path, capsys):
    """Its data_paths are another machine's: they are not looked at here."""
    from kto.formats import hub
    from kto.formats.cache import open_cache
    from kto.train.eval_cache import note_changed_inputs

    data = tmp_path / "data.jsonl"
    write_rows(data, text_rows())
    cache = open_cache(tiny_cache)
    cache.manifest = naming(cache.manifest, data)
    cfg, main = SimpleNamespace(cache=tiny_cache, eval_cache=None), SimpleNamespace(is_main_process=True)
    note_changed_inputs(cfg, cache, None, main)
    assert "has changed since" in capsys.readouterr().err  # local: said
    hub._FETCHED[Path(tiny_cache)] = "hf:me/c"
    try:
        note_changed_inputs(cfg, cache, None, main)
    finally:
        hub._FETCHED.pop(Path(tiny_cache))
    assert "has changed since" not in capsys.readouterr().err


# ---- 2. a cache whose tokenizer has no chat template ------------------------------------------


def without_template(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture(scope="module")
def notpl(tmp_path_factory, tiny_model_dir) -> Path:
    return without_template(tiny_model_dir, tmp_path_factory.mktemp("notpl") / "tiny_notpl")


def test_a_cache_made_without_a_template_trains_a_model_with_one(notpl, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    cache = make_cache(tmp_path, text_rows(), notpl, "text.jsonl")
    result = run_train(cache, tiny_model_dir, tmp_path / "r", *ONE_STEP)
    assert result.exit_code == 0, result.output
    assert (
        f"note: --model {tiny_model_dir} has a chat template and --cache {cache}'s tokenizer none: its rows are text prompts, not rendered "
        "with a template (the cached token ids do not depend on it); checkpoints and final/ keep --model's template"
    ) in result.output
    saved = AutoTokenizer.from_pretrained(tmp_path / "r" / "final").chat_template
    assert saved == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template is not None


def test_a_model_without_a_template_on_a_rendered_cache_is_advised_truly(tiny_cache, notpl, tmp_path):
    """Rerunning kto-precompute with a --model without a template refuses conversational rows: the
    note does not advise it."""
    result = run_train(tiny_cache, notpl, tmp_path / "r", *ONE_STEP)
    assert result.exit_code == 0, result.output
    note = [line for line in result.output.splitlines() if line.startswith(f"note: --model {notpl}")]
    assert note == [
        f"note: --model {notpl} has no chat template, and --cache {tiny_cache}'s prompts were rendered with one; the cached token ids do not "
        "depend on it (vocabulary, special tokens and pipeline are the cache's), and checkpoints and final/ are saved with the cache's template, "
        "the format trained on"
    ]


# ---- 3. a --model at the reference's path that holds other weights now --------------------------


@pytest.fixture(scope="module")
def moved_on(tmp_path_factory, tiny_model_dir, tiny2) -> tuple[Path, Path]:
    """(model folder, cache): the cache made from `m` typed relative, then tiny2's weights copied
    over m's."""
    root = tmp_path_factory.mktemp("moved-on")
    shutil.copytree(tiny_model_dir, root / "m")
    write_rows(root / "text.jsonl", text_rows())
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = CliRunner().invoke(precompute, precompute_args(Path("text.jsonl"), Path("m"), Path("c")))
    assert result.exit_code == 0, result.output
    shutil.copy(tiny2 / "model.safetensors", root / "m" / "model.safetensors")
    return root / "m", root / "c"


def test_the_model_path_is_recorded_absolute(moved_on):
    model, cache = moved_on
    assert read_manifest(cache).info["model_path"] == str(model)


def test_a_hub_id_is_recorded_as_given(tiny_cache, tmp_path):
    manifest = read_manifest(tiny_cache)
    replace(manifest, info={**manifest.info, "model_path": "org/name"}).write(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["info"]["model_path"] == "org/name"


def test_the_same_path_with_other_weights_is_said_so(moved_on, tmp_path):
    model, cache = moved_on
    result = run_train(cache, model, tmp_path / "r", *ONE_STEP)
    assert result.exit_code == 0, result.output
    assert (
        f"step-0 check skipped: --model {model} is the path --cache {cache} was scored with, but the files there changed since the cache "
        "was made (its identity differs from the manifest's); the rewards r = log πθ − log πref are measured against that reference"
    ) in result.output


def test_the_same_path_with_other_weights_and_a_drift_tolerance(moved_on, tmp_path):
    model, cache = moved_on
    result = run_train(cache, model, tmp_path / "r", *ONE_STEP, "--drift-tolerance", "0.1")
    assert result.exit_code == 2 and not (tmp_path / "r").exists(), result.output
    assert train_error_line(result.output) == (
        f"kto-train: error: --drift-tolerance 0.1: the step-0 check compares --model with the cache's reference, and --model {model} is the "
        f"path --cache {cache} was scored with, but the files there changed since the cache was made; leave the tolerance out, or rerun "
        "kto-precompute with the model now there"
    )


def test_a_drift_tolerance_from_a_config_file_is_named_by_its_key(tiny_cache, tiny2, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("drift_tolerance: 0.1\n")
    result = run_train(tiny_cache, tiny2, tmp_path / "r", *ONE_STEP, "--config", str(config))
    assert result.exit_code == 2, result.output
    line = train_error_line(result.output)
    assert line.startswith(f"kto-train: error: --config {config}: drift_tolerance 0.1: the step-0 check "), line
    assert line.endswith("; leave the tolerance out, or train " + str(read_manifest(tiny_cache).info["model_path"])), line


# ---- 4 and 9. resuming: --drift-tolerance, and --resume by a checkpoint's bare name ------------------


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny_cache, tiny2) -> Path:
    out = tmp_path_factory.mktemp("run") / "r_t1"
    result = run_train(tiny_cache, tiny2, out, "--max-steps", "2", "--batch-size", "2", "--save-every", "1")
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    return out


def resumed_copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("*.lock"))
    return dest


def test_a_drift_tolerance_on_resume_is_taken(two_checkpoints, tiny_cache, tiny2, tmp_path):
    """The step-0 check ran (or was skipped) when the run started; a resumed run has nothing to check."""
    out = resumed_copy(two_checkpoints, tmp_path / "r")
    args = ("--max-steps", "2", "--batch-size", "2", "--save-every", "1", "--resume", str(out / "checkpoint-1"), "--drift-tolerance", "0.1")
    result = run_train(tiny_cache, tiny2, out, *args)
    assert result.exit_code == 0, result.output
    assert "step-0 check skipped: the policy was resumed from a checkpoint" in result.output


def test_resume_by_the_bare_name_its_refusal_lists(two_checkpoints, tiny_cache, tiny2, tmp_path, monkeypatch):
    out = resumed_copy(two_checkpoints, tmp_path / "r_t1")
    monkeypatch.chdir(tmp_path)
    args = ("--max-steps", "2", "--batch-size", "2", "--save-every", "1", "--resume", "checkpoint-1")
    result = run_train(tiny_cache, tiny2, Path("r_t1"), *args)
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint-2.superseded").is_dir()  # resumed from r_t1/checkpoint-1


def test_a_bare_name_not_in_the_run_is_refused_listing_the_names_it_takes(two_checkpoints, tiny_cache, tiny2, tmp_path, monkeypatch):
    out = resumed_copy(two_checkpoints, tmp_path / "r_t1")
    monkeypatch.chdir(tmp_path)
    result = run_train(tiny_cache, tiny2, Path("r_t1"), "--max-steps", "2", "--batch-size", "2", "--save-every", "1", "--resume", "checkpoint-7")
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == (
        "kto-train: error: --resume checkpoint-7: not a checkpoint of the run in --out r_t1 (its checkpoints: checkpoint-1, checkpoint-2)"
    )
    assert (out / "checkpoint-2").is_dir()


# ---- 6. the eval split named through `.` or a link ----------------------------------------------


@pytest.fixture(scope="module")
def split_cache(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("split")
    write_rows(root / "chat.jsonl", chat_rows())
    result = CliRunner().invoke(precompute, precompute_args(root / "chat.jsonl", tiny_model_dir, root / "c0", "--eval-fraction", "0.25"))
    assert result.exit_code == 0, result.output
    return root / "c0"


def refusal_of(cache: Path, tmp_path: Path) -> str:
    from kto.formats.errors import InputError
    from kto.train.config import TrainConfig
    from kto.train.eval_cache import refuse_eval_split

    with pytest.raises(InputError) as refused:
        refuse_eval_split(TrainConfig(cache=cache, model="m", out=tmp_path / "o"), read_manifest(cache))
    return str(refused.value)


def test_the_eval_split_as_dot_names_its_real_parent(split_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(split_cache / "eval")
    assert refusal_of(Path("."), tmp_path).endswith(f"; pass --cache {split_cache.resolve()} --eval-cache .")


def test_a_linked_eval_split_names_its_real_parent(split_cache, tmp_path):
    link = tmp_path / "ev"
    link.symlink_to(split_cache / "eval")
    assert refusal_of(link, tmp_path).endswith(f"; pass --cache {split_cache.resolve()} --eval-cache {link}")
