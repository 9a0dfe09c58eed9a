"""kto-inspect summary's "made from" section: the inputs, settings and versions the manifest
records, checked against the data file the fixture wrote and the flags precompute was given."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, text_rows, write_rows

from kto.formats.manifest import read_manifest
from kto.inspection.cli import main
from kto.inspection.summary import made_from, made_from_lines


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summary_json(cache: Path) -> dict:
    result = invoke("summary", cache, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def summary_text(cache: Path) -> str:
    result = invoke("summary", cache)
    assert result.exit_code == 0, result.output
    return result.stdout


def with_info(cache: Path, info: dict) -> None:
    """Replace manifest.json's `info` as it is (Manifest.write would make its paths absolute)."""
    path = cache / "manifest.json"
    obj = json.loads(path.read_text())
    path.write_text(json.dumps({**obj, "info": info}))


def precompute(data: Path, model: Path, out: Path, *extra: str) -> Path:
    from kto.precompute.cli import main as precompute_main

    result = CliRunner().invoke(precompute_main, precompute_args(data, model, out, *extra), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def split_cache(tmp_path_factory, tiny_model_dir) -> Path:
    """Chat rows with an eval fraction, a seed, a template of its own and prefix sharing off."""
    root = tmp_path_factory.mktemp("made-from")
    data = write_rows(root / "feedback v2.jsonl", chat_rows())
    template = root / "plain.jinja"
    template.write_text("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    extra = ("--eval-fraction", "0.25", "--seed", "7", "--max-prompt-length", "40", "--no-prefix-sharing")
    return precompute(data, tiny_model_dir, root / "cache", *extra, "--chat-template", str(template), "--chat-template-kwargs", '{"flavour": "plain"}')


def test_json_names_the_data_file_the_settings_and_the_versions(tiny_cache):
    import torch
    import transformers

    data = tiny_cache.parent / "chat.jsonl"  # conftest.make_cache wrote it beside the cache
    m = summary_json(tiny_cache)["made_from"]
    assert m["inputs"] == [{"name": "chat.jsonl", "sha256": sha256(data), "path": str(data)}]
    assert "eval_inputs" not in m and m["parent"] is None
    assert m["settings"] == {
        "max_length": 64,
        "max_prompt_length": 32,
        "eval_fraction": 0.0,
        "seed": 0,
        "dtype": "fp32",
        "attn_implementation": "sdpa",
        "prefix_sharing": True,
        "store_token_logps": True,
        "chat_template": {"source": "model", "sha256": read_manifest(tiny_cache).content.tokenizer["chat_template"]},
    }
    version = importlib.metadata.version("kto-offline")
    assert m["versions"] == {"kto": version, "transformers": transformers.__version__, "torch": torch.__version__}
    assert m["device"] == "cpu"


def test_text_shows_a_few_lines_of_it(tiny_cache):
    import transformers

    data = tiny_cache.parent / "chat.jsonl"
    out = summary_text(tiny_cache)
    section = out[out.index("\nmade from\n") + 1 :].split("\n\n")[0].splitlines()[1:]
    assert 3 <= len(section) <= 6, section
    assert section[0] == f"  data       chat.jsonl  sha256 {sha256(data)[:12]}  {data}"
    assert section[1] == "  settings   max_length 64, max_prompt_length 32, eval_fraction 0, seed 0, dtype fp32, attention sdpa, prefix sharing on"
    template = read_manifest(tiny_cache).content.tokenizer["chat_template"]
    assert section[2] == f"  template   the model's own (sha256 {template[:12]})"
    assert section[3].startswith(f"  made with  kto {importlib.metadata.version('kto-offline')}, transformers {transformers.__version__}, torch ")


def test_settings_given_to_precompute_are_shown(split_cache):
    data = split_cache.parent / "feedback v2.jsonl"
    m = summary_json(split_cache)["made_from"]
    assert m["inputs"] == [{"name": "feedback v2.jsonl", "sha256": sha256(data), "path": str(data)}]
    s = m["settings"]
    assert (s["eval_fraction"], s["seed"], s["max_prompt_length"], s["prefix_sharing"]) == (0.25, 7, 40, False)
    template = hashlib.sha256((split_cache.parent / "plain.jinja").read_bytes()).hexdigest()
    assert s["chat_template"] == {"source": "--chat-template", "sha256": template}
    assert s["chat_template_kwargs"] == {"flavour": "plain"}
    out = summary_text(split_cache)
    assert "eval_fraction 0.25, seed 7" in out and "max_prompt_length 40" in out and "prefix sharing off" in out
    assert f'  template   --chat-template (sha256 {template[:12]}); kwargs {{"flavour": "plain"}}' in out


def test_eval_split_names_its_parent(split_cache):
    parent = read_manifest(split_cache)
    m = summary_json(split_cache / "eval")["made_from"]
    assert m["parent"] == {"cache": str(split_cache), "fingerprint": parent.fingerprint}
    assert m["inputs"] == summary_json(split_cache)["made_from"]["inputs"]  # its rows: the same file, held out
    assert f"  eval of    {split_cache} (fingerprint {parent.fingerprint[:12]}; the same inputs and settings)" in summary_text(split_cache / "eval")


def test_an_eval_folder_of_another_cache_names_no_parent(split_cache, tiny_cache, tmp_path):
    """A folder named eval inside a cache of other content: not its eval split."""
    other = tmp_path / "other"
    shutil.copytree(tiny_cache, other)
    shutil.copytree(split_cache / "eval", other / "eval")
    assert summary_json(other / "eval")["made_from"]["parent"] is None
    assert "eval of" not in summary_text(other / "eval")


def test_eval_data_inputs(tmp_path, tiny_model_dir):
    """--eval-data: the eval split's rows come from its own files; the train split names them held out."""
    train = write_rows(tmp_path / "train.jsonl", chat_rows())
    held = write_rows(tmp_path / "held.jsonl", text_rows())
    cache = precompute(train, tiny_model_dir, tmp_path / "cache", "--eval-data", str(held))
    m = summary_json(cache)["made_from"]
    assert m["inputs"][0]["sha256"] == sha256(train)
    assert [(i["name"], i["sha256"]) for i in m["eval_inputs"]] == [("held.jsonl", sha256(held))]
    assert m["eval_inputs"][0]["path"] == str(held)  # info.eval_data_paths
    assert f"  held out   held.jsonl  sha256 {sha256(held)[:12]}" in summary_text(cache)
    e = summary_json(cache / "eval")["made_from"]
    assert [i["name"] for i in e["inputs"]] == ["held.jsonl"] and e["inputs"][0]["sha256"] == sha256(held)
    assert e["inputs"][0]["path"] == str(held)  # its rows' files, not the training cache's --data
    assert e["parent"]["cache"] == str(cache)
    assert f"  data       held.jsonl  sha256 {sha256(held)[:12]}" in summary_text(cache / "eval")


def test_a_manifest_without_paths_or_versions(tiny_cache, tmp_path):
    """`info` is information only (and older caches lack parts of it): a relative path, or none,
    is not shown as where the file is; missing versions leave their line out."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    manifest = read_manifest(cache)
    with_info(cache, {"data_paths": ["chat.jsonl"]})  # as kto-precompute wrote --data before it made paths absolute
    m = summary_json(cache)["made_from"]
    assert m["inputs"] == [{"name": "chat.jsonl", "sha256": manifest.content.inputs[0]["sha256"]}]
    assert m["versions"] == {} and m["device"] is None
    out = summary_text(cache)
    assert "made with" not in out and f"  data       chat.jsonl  sha256 {manifest.content.inputs[0]['sha256'][:12]}\n" in out
    with_info(cache, {"data_paths": ["/elsewhere/other.jsonl"]})  # not this input's file: not shown
    assert summary_json(cache)["made_from"]["inputs"][0].get("path") is None
    with_info(cache, {})
    assert summary_json(cache)["made_from"]["inputs"][0].get("path") is None


def test_dataset_inputs_and_many_files(tiny_cache):
    """A hub dataset by its name and revision, a save_to_disk folder by its tree sha256; past a
    few inputs the text counts the rest (--json lists every one)."""
    manifest = read_manifest(tiny_cache)
    hub = {"name": "hf:org/feedback:train", "config": None, "split": "train", "dataset": "org/feedback", "revision": "a" * 40}
    saved = {"name": "feedback:train", "config": None, "split": "train", "sha256": "b" * 64}
    files = [{"name": f"part-{k}.jsonl", "sha256": f"{k:064x}"} for k in range(6)]
    content = dataclasses.replace(manifest.content, inputs=(hub, saved, *files), max_samples={"rows_per_input": 100, "rule": "per input"})
    m = made_from(dataclasses.replace(manifest, content=content, info={}), tiny_cache)
    assert m["inputs"][0] == hub and m["inputs"][1] == saved and len(m["inputs"]) == 8
    assert m["settings"]["max_samples"] == 100
    lines = made_from_lines(m)
    assert lines[0] == f"  data       hf:org/feedback:train  revision {'a' * 12}"
    assert lines[1] == f"             feedback:train  sha256 {'b' * 12}"
    assert lines[5] == "             … and 3 more inputs (--json lists them)"
    assert "at most 100 rows per input (--max-samples)" in "\n".join(lines)


def test_text_escapes_names(tiny_cache):
    manifest = read_manifest(tiny_cache)
    content = dataclasses.replace(manifest.content, inputs=({"name": "evil\x1b]0;x\x07.jsonl", "sha256": "c" * 64},))
    lines = made_from_lines(made_from(dataclasses.replace(manifest, content=content, info={"data_paths": ["/tmp/a\nb/evil\x1b]0;x\x07.jsonl"]}), tiny_cache))
    assert "\x1b" not in "".join(lines) and "\n" not in "".join(lines)
    assert lines[0] == f"  data       evil\\x1b]0;x\\x07.jsonl  sha256 {'c' * 12}  /tmp/a\\nb/evil\\x1b]0;x\\x07.jsonl"


def test_an_input_entry_that_is_no_identity_is_shown_as_it_is(tiny_cache):
    """content.inputs is not checked entry by entry when a manifest is read: summary must not crash on one."""
    manifest = read_manifest(tiny_cache)
    content = dataclasses.replace(manifest.content, inputs=(["odd", 1],))
    m = made_from(dataclasses.replace(manifest, content=content), tiny_cache)
    assert m["inputs"] == [["odd", 1]]
    assert made_from_lines(m)[0] == '  data       ["odd", 1]'
