"""--model RUN, a kto-train run directory, is refused saying where the run's model is (RUN/final,
or RUN/final-merged under LoRA), not "directory has no config.json". A run directory is told by
its record (kto_run.json, or a legacy config.json that is one) or its metrics.jsonl."""

import json
from pathlib import Path

import pytest
from conftest import run_train, train_error_line

from kto.formats.compute.sources import resolve_source
from kto.formats.errors import InputError
from kto.formats.runrecord import write_run_config


def run_dir(root: Path, *folders: str, record: str = "kto_run.json") -> Path:
    run = root / "run"
    run.mkdir()
    if record == "kto_run.json":
        write_run_config(run, {"model": "m"}, {})
    elif record == "config.json":  # a run written before kto_run.json: its record is config.json
        (run / "config.json").write_text(json.dumps({"kind": "kto-train run", "version": 1, "config": {}, "derived": {}}))
    else:
        (run / "metrics.jsonl").write_text('{"step": 1}\n')
    for folder in folders:
        (run / folder).mkdir()
    return run


@pytest.mark.parametrize("record", ["kto_run.json", "config.json", "metrics.jsonl"])
def test_a_finished_run_points_at_its_final(tmp_path, record, monkeypatch):
    run_dir(tmp_path, "final", record=record)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as caught:
        resolve_source("run/")
    assert str(caught.value) == "--model run/: a kto-train run directory, not a model; its trained model is run/final: give that"


def test_a_lora_run_with_merged_adapters_points_at_final_merged(tmp_path):
    run = run_dir(tmp_path, "final", "final-merged", "checkpoint-2")
    with pytest.raises(InputError) as caught:
        resolve_source(str(run), flag="--base-model")
    assert str(caught.value) == (
        f"--base-model {run}: a kto-train run directory, not a model; its trained model is {run}/final (LoRA adapters), "
        f"merged into the base in {run}/final-merged: give {run}/final-merged"
    )


def test_an_unfinished_run_says_final_comes_at_the_end(tmp_path):
    run = run_dir(tmp_path, "checkpoint-2")
    with pytest.raises(InputError) as caught:
        resolve_source(str(run))
    assert str(caught.value) == (
        f"--model {run}: a kto-train run directory, not a model; its trained model is {run}/final, "
        "written when the run finishes: give it then, or one of the run's checkpoint-STEP folders"
    )


def test_a_folder_without_config_json_that_is_no_run_is_told_as_before(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as caught:
        resolve_source(str(tmp_path / "empty"))
    assert str(caught.value) == f"--model {tmp_path / 'empty'}: directory has no config.json"


def test_kto_train_says_it_in_one_line(tiny_cache, tmp_path):
    run = run_dir(tmp_path, "final")
    result = run_train(tiny_cache, run, tmp_path / "out", "--max-steps", "1")
    assert result.exit_code != 0
    assert train_error_line(result.output) == (
        f"kto-train: error: --model {run}: a kto-train run directory, not a model; its trained model is {run}/final: give that"
    )


def test_a_model_folder_holding_another_trainers_metrics_jsonl_is_a_model(tmp_path, tiny_model_dir):
    """Only kto-train's record marks a run: a model with a metrics.jsonl beside it is loaded."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "metrics.jsonl").write_text('{"loss": 1}\n')
    assert resolve_source(str(model)).directory == model.resolve()


def test_a_lora_run_without_merged_adapters_says_how_to_merge(tmp_path):
    """With checkpoints a resume merges (and trains nothing again: the last step is saved);
    without, --resume is refused, so peft's own merge is the way."""
    run = run_dir(tmp_path, "final")
    (run / "final" / "adapter_config.json").write_text("{}")
    with pytest.raises(InputError, match=r"LoRA adapters: merge them into the base \(peft\.AutoPeftModelForCausalLM.*merge_and_unload"):
        resolve_source(str(run))
    (run / "checkpoint-2").mkdir()
    with pytest.raises(InputError, match=r"LoRA adapters: merge them into the base \(rerun its kto-train command with --resume --merge-adapters"):
        resolve_source(str(run))


def test_a_bare_gguf_file_name_names_its_absolute_folder_as_the_peft_base(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    for spec in ("m.gguf", "./m.gguf"):
        assert resolve_source(spec).peft_base == str(tmp_path.resolve())
    assert resolve_source(str(tmp_path / "m.gguf")).peft_base == str(tmp_path)


def test_a_folder_of_several_gguf_files_asks_for_one(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(InputError) as caught:
        resolve_source(str(tmp_path))
    assert str(caught.value) == f"--model {tmp_path}: 2 .gguf files (a.gguf, b.gguf) and no config.json: give the one to load, --model {tmp_path}/a.gguf"


def test_an_unfinished_lora_run_says_how_to_merge_its_checkpoints(tmp_path):
    run = run_dir(tmp_path, "checkpoint-2")
    (run / "checkpoint-2" / "adapter_config.json").write_text("{}")
    with pytest.raises(
        InputError, match=r"LoRA adapters: merge them into the base \(rerun its kto-train command with --resume --merge-adapters: it trains only"
    ):
        resolve_source(str(run))


def test_a_linked_gguf_file_is_loaded_by_the_links_own_folder_and_name(tmp_path, monkeypatch):
    """As the HF cache lays files out (snapshots/…/smol.gguf -> ../../blobs/HASH): the folder
    and the name the user gave, whose open follows the link. Before, the link's folder with the
    target's name (no such file there), or the target's folder with the link's name."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "3f2a9c0d1e").write_bytes(b"GGUF")
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "smol.gguf").symlink_to("../blobs/3f2a9c0d1e")
    monkeypatch.chdir(tmp_path)
    source = resolve_source("snap/smol.gguf")
    assert (source.directory, source.gguf_file, source.peft_base) == (tmp_path / "snap", "smol.gguf", "snap")
    assert (source.directory / source.gguf_file).read_bytes() == b"GGUF"


def test_a_gguf_given_under_home_names_an_expanded_peft_base(tmp_path, monkeypatch):
    """`model: ~/m/X.gguf` in a config file: peft and transformers do not expand `~`, so the
    adapter's base and the card's load line named a folder that never loads."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "X.gguf").write_bytes(b"GGUF")
    assert resolve_source("~/m/X.gguf").peft_base == str(tmp_path / "m")


def test_a_gguf_beside_a_hugging_face_tokenizer_is_refused(tmp_path):
    """The GGUF's tokenizer came out of such a folder without its special tokens or chat
    template (completions silently lost their EOS; kto-train failed on a pad of None). A stub
    config.json, as GGUF repos on the hub ship, is no reason to refuse."""
    (tmp_path / "X.gguf").write_bytes(b"GGUF")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert resolve_source(str(tmp_path / "X.gguf")).gguf_file == "X.gguf"
    (tmp_path / "tokenizer.json").write_text("{}")
    said = (
        f"--model {tmp_path / 'X.gguf'}: its folder also holds tokenizer.json, which transformers would read instead of the GGUF's own "
        "tokenizer (losing its special tokens and chat template); "
    )
    with pytest.raises(InputError) as caught:
        resolve_source(str(tmp_path / "X.gguf"))
    assert str(caught.value) == said + "move the .gguf file into a folder of its own"
    (tmp_path / "model.safetensors").write_bytes(b"w")
    with pytest.raises(InputError) as caught:
        resolve_source(str(tmp_path / "X.gguf"))
    assert str(caught.value) == said + "give that folder itself as --model (its Hugging Face model), or move the .gguf file into a folder of its own"
