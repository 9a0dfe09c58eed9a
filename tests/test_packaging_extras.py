"""An optional extra that is not installed (gguf for a .gguf --model, datasets for an hf: input):
one line naming what was given, the package and the extra to install, before the model's
tokenizer loads. The packages are hidden as where they are not installed: None in sys.modules
makes `import NAME` raise ModuleNotFoundError(name=NAME)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import precompute_args, text_rows, write_rows

from kto.formats.compute.gguf_once import GGUF_HINT, refuse_without_gguf
from kto.formats.errors import InputError
from kto.precompute.inputs import hub

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
# Wired into the commands' early checks by another file than these helpers (the fixer's report):
# formats/compute/sources.py resolve_source for gguf, precompute/inputs/records.py for datasets.


def hide(monkeypatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, name, None)


def no_tokenizer_load(monkeypatch) -> None:
    """The refusal must come first: a tokenizer load (~8 s for a GGUF) fails the test instead."""
    import transformers

    def loaded(*args, **kwargs):
        raise RuntimeError("the tokenizer was loaded before the refusal")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loaded)


def precompute(*args) -> tuple[int, str]:
    from kto.precompute.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


def test_the_hints_name_extras_that_exist():
    assert GGUF_HINT == "pip install 'kto-offline[gguf]'" and any(d.startswith("gguf") for d in EXTRAS["gguf"])
    assert hub.INSTALL_HINT == "pip install 'kto-offline[hf]'" and any(d.startswith("datasets") for d in EXTRAS["hf"])


# ---- gguf ----------------------------------------------------------------------------------------


def test_without_gguf_the_file_and_the_extra_are_named(monkeypatch, tmp_path):
    hide(monkeypatch, "gguf")
    with pytest.raises(InputError) as caught:
        refuse_without_gguf(tmp_path / "m.gguf", "--base-model")
    message = str(caught.value)
    assert message.startswith(f"--base-model {tmp_path / 'm.gguf'}: ") and "gguf package" in message
    assert message.endswith(GGUF_HINT) and "\n" not in message


def test_with_gguf_nothing_is_refused(tmp_path):
    pytest.importorskip("gguf")
    refuse_without_gguf(tmp_path / "m.gguf")


def test_precompute_refuses_a_gguf_model_without_gguf_before_the_tokenizer(monkeypatch, tmp_path):
    model = tmp_path / "models" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF" + bytes(60))  # never parsed: the refusal comes first
    data = write_rows(tmp_path / "data.jsonl", text_rows())
    hide(monkeypatch, "gguf")
    no_tokenizer_load(monkeypatch)
    code, err = precompute(*precompute_args(data, model, tmp_path / "out"))
    assert code == 2, err
    assert err.splitlines() == [
        f"kto-precompute: error: --model {model}: a GGUF file, and reading one needs the gguf package, which is not installed: {GGUF_HINT}"
    ]


# ---- datasets ------------------------------------------------------------------------------------


def test_without_datasets_the_flag_and_the_package_are_named(monkeypatch):
    hide(monkeypatch, "datasets")
    with pytest.raises(InputError) as caught:
        hub.check_dataset_input("hf:foo/bar:test", "--eval-data")
    message = str(caught.value)
    assert message.startswith("--eval-data hf:foo/bar:test: ") and "datasets package" in message
    assert message.endswith(hub.INSTALL_HINT)


def test_a_bad_spelling_names_its_flag():
    with pytest.raises(InputError, match=r"^--eval-data hf:a:b:c:d: expected hf:ID:SPLIT"):
        hub.check_dataset_input("hf:a:b:c:d", "--eval-data")


def test_the_read_names_the_package_too(monkeypatch):
    """The message where a read (not the early check) finds datasets missing: a library caller's."""
    hide(monkeypatch, "datasets")
    with pytest.raises(InputError, match=r"^--data hf:foo/bar:test: reading it needs the datasets package, which is not installed: pip install"):
        next(hub.dataset_records(hub.parse_spec("hf:foo/bar:test")))


def test_precompute_names_eval_data_and_datasets_before_the_tokenizer(monkeypatch, tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "data.jsonl", text_rows())
    hide(monkeypatch, "datasets")
    no_tokenizer_load(monkeypatch)
    code, err = precompute(*precompute_args(data, tiny_model_dir, tmp_path / "out", "--eval-data", "hf:foo/bar:test"))
    assert code == 2, err
    assert err.splitlines() == [
        f"kto-precompute: error: --eval-data hf:foo/bar:test: reading it needs the datasets package, which is not installed: {hub.INSTALL_HINT}"
    ]
