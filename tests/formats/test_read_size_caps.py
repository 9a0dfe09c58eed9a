"""Files read whole as configuration (--config YAML/TOML/JSON, --chat-template, dataset_info.json,
--sharegpt-info) are refused over 16 MiB, in one line naming the file and its size, before they
are read: a 1 GB YAML --config parsed for minutes (PyYAML's pure-Python loader reads ~3 MB/s)
while memory grew to 3 GB. Data files, read by streaming readers, have no such cap."""

import json
import os
from pathlib import Path

import pytest
from conftest import write_rows

from kto.formats.config_file import read_mapping
from kto.formats.errors import InputError
from kto.formats.files import CONFIG_BYTES, utf8_text
from kto.precompute.inputs.dataset_info import load_datasets
from kto.precompute.inputs.records import read_examples
from kto.precompute.inputs.sharegpt import load_sharegpt_info
from kto.precompute.templates import load_chat_template

OVER = CONFIG_BYTES + 1


def sparse(path: Path, size: int = OVER, head: bytes = b"") -> Path:
    """A file of `size` bytes that takes no disk: only its head is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head)
    os.truncate(path, size)
    return path


def refused(call, *args) -> str:
    with pytest.raises(InputError) as err:
        call(*args)
    message = str(err.value)
    assert "\n" not in message
    assert f"{OVER:,} bytes" in message and "16 MiB" in message, message
    return message


def test_the_cap_is_16_mib():
    assert CONFIG_BYTES == 16 * 1024 * 1024


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".toml", ".json"])
def test_config_over_the_cap_is_refused(tmp_path, suffix):
    path = sparse(tmp_path / f"big{suffix}", head=b"run_name: 'a")
    assert refused(read_mapping, path).startswith(f"--config {path}: ")


def test_chat_template_over_the_cap_is_refused(tmp_path):
    path = sparse(tmp_path / "big.jinja", head=b"{{ messages }}")
    assert refused(load_chat_template, path, None).startswith(f"--chat-template {path}: ")


def test_dataset_info_over_the_cap_is_refused(tmp_path):
    path = sparse(tmp_path / "data" / "dataset_info.json", head=b"{")
    assert str(path) in refused(load_datasets, "d", tmp_path / "data")


def test_sharegpt_info_over_the_cap_is_refused(tmp_path):
    path = sparse(tmp_path / "info.json", head=b"{")
    assert refused(load_sharegpt_info, f"{path}#d").startswith(f"--sharegpt-info {path}#d: ")


def test_a_file_at_the_cap_is_read(tmp_path):
    path = tmp_path / "at.yaml"
    path.write_bytes(b"a" * CONFIG_BYTES)
    assert len(utf8_text(path, "x")) == CONFIG_BYTES


def test_a_file_that_says_it_is_empty_is_still_capped(tmp_path, monkeypatch):
    """/proc files report size 0 and a file may grow while read: at most cap+1 bytes are read."""
    path = tmp_path / "grows.yaml"
    path.write_bytes(b"a" * OVER)
    real = os.fstat

    def zero_size(fd):
        st = real(fd)
        return os.stat_result((*st[:6], 0, *st[7:]))

    monkeypatch.setattr(os, "fstat", zero_size)
    with pytest.raises(InputError, match=r"^x: more than 16 MiB"):
        utf8_text(path, "x")


def test_data_files_are_not_capped(tmp_path):
    """A JSONL input of 17 MiB is read in full: the cap is for configuration only."""
    rows = [{"prompt": f"Q{i}?", "completion": " " + "a" * (1 << 20), "label": True} for i in range(17)]
    path = write_rows(tmp_path / "big.jsonl", rows)
    assert path.stat().st_size > CONFIG_BYTES
    assert len(read_examples([path])) == 17


def test_read_json_of_cache_files_is_not_capped(tmp_path):
    """tokenizer.json of a large vocabulary is tens of MB; cache and run files keep no cap."""
    from kto.formats.files import read_json

    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"v": "a" * OVER}))
    assert len(read_json(path)["v"]) == OVER
