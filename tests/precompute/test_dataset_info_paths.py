"""A dataset_info.json entry reads only files under --dataset-dir: an absolute `file_name`, one
that climbs out with `..`, or a symlink (in DIR or in a folder entry) to a file outside is refused
in one line naming the entry, the file_name and DIR. A dataset_info.json often comes with
downloaded data, and such an entry read `../../victim/private.jsonl` into the cache; errors about
the file named only its base name, so the user could not see that it lay outside DIR."""

import json
from pathlib import Path

import pytest
from conftest import write_rows

from kto.formats.errors import InputError
from kto.precompute.inputs.dataset_info import load_datasets

ROW = {"prompt": "Q?", "completion": " A.", "label": True}


def info(d: Path, **entries) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "dataset_info.json").write_text(json.dumps(entries))
    return d


@pytest.fixture
def outside(tmp_path) -> Path:
    (tmp_path / "victim").mkdir()
    return write_rows(tmp_path / "victim" / "private.jsonl", [ROW])


def refused(names: str, d: Path) -> str:
    with pytest.raises(InputError) as err:
        load_datasets(names, d)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_absolute_file_name_is_refused(tmp_path, outside):
    d = info(tmp_path / "data", abs={"file_name": str(outside)})
    message = refused("abs", d)
    assert message.startswith(f"--dataset abs: entry abs of {d / 'dataset_info.json'}: file_name {outside}: ")
    assert "absolute" in message and f"must lie under --dataset-dir {d}" in message


def test_file_name_climbing_out_is_refused(tmp_path, outside):
    d = info(tmp_path / "data", up={"file_name": "../victim/private.jsonl"})
    message = refused("up", d)
    assert message.startswith(f"--dataset up: entry up of {d / 'dataset_info.json'}: file_name ../victim/private.jsonl: ")
    assert str(outside) in message and f"must lie under --dataset-dir {d}" in message


def test_missing_file_outside_is_refused_as_outside(tmp_path):
    """Whether the file exists or not, the entry points outside: said before `no such file`."""
    d = info(tmp_path / "data", up={"file_name": "../../etc/nothing.jsonl"})
    assert "must lie under --dataset-dir" in refused("up", d)


def test_symlinks_the_user_made_in_dir_are_followed(tmp_path, outside):
    """Links in DIR (a file, a folder, a shard of a folder) are the user's own way to keep data
    on another disk: followed. The check is on the entry's text, what comes with downloaded data."""
    d = info(tmp_path / "data", link={"file_name": "link.jsonl"}, shards={"file_name": "shards"}, mixed={"file_name": "mixed/"})
    (d / "link.jsonl").symlink_to(outside)
    (d / "shards").symlink_to(outside.parent, target_is_directory=True)
    (d / "mixed").mkdir()
    write_rows(d / "mixed" / "part-0.jsonl", [ROW])
    (d / "mixed" / "part-1.jsonl").symlink_to(outside)
    assert load_datasets("link", d).data == (str(d / "link.jsonl"),)
    assert load_datasets("mixed", d).data == (str(d / "mixed" / "part-0.jsonl"), str(d / "mixed" / "part-1.jsonl"))


def test_second_entry_of_a_list_is_named(tmp_path, outside):
    d = info(tmp_path / "data", ok={"file_name": "ok.jsonl"}, up={"file_name": "../victim/private.jsonl"})
    write_rows(d / "ok.jsonl", [ROW])
    assert refused("ok,up", d).startswith("--dataset ok,up: entry up of ")


def test_files_under_dir_still_read(tmp_path):
    """A subfolder, a `..` that stays inside, a folder of shards, a symlink inside DIR, and DIR
    itself reached through a symlink: all lie under DIR."""
    real = tmp_path / "real"
    d = info(
        real,
        sub={"file_name": "sub/a.jsonl"},
        dots={"file_name": "sub/../b.jsonl"},
        shards={"file_name": "shards/"},
        inner={"file_name": "inner.jsonl"},
    )
    (d / "sub").mkdir()
    write_rows(d / "sub" / "a.jsonl", [ROW])
    write_rows(d / "b.jsonl", [ROW])
    (d / "shards").mkdir()
    for i in range(2):
        write_rows(d / "shards" / f"part-{i}.jsonl", [ROW])
    (d / "inner.jsonl").symlink_to(d / "b.jsonl")
    (tmp_path / "data").symlink_to(real, target_is_directory=True)
    via = tmp_path / "data"
    entry = load_datasets("sub,dots,shards", via)
    assert load_datasets("inner", via).data == (str(via / "inner.jsonl"),)  # b.jsonl again: alone, or it reads dots' rows twice
    assert entry.data == (
        str(via / "sub" / "a.jsonl"),
        str(via / "sub" / ".." / "b.jsonl"),
        str(via / "shards" / "part-0.jsonl"),
        str(via / "shards" / "part-1.jsonl"),
    )
    assert entry.spans == (1, 1, 2)


def test_hub_entries_still_work(tmp_path):
    d = info(tmp_path / "data", hub={"hf_hub_url": "trl-lib/kto-mix-14k", "split": "test"}, sub={"hf_hub_url": "org/name", "subset": "s"})
    assert load_datasets("hub", d).data == ("hf:trl-lib/kto-mix-14k:test",)
    assert load_datasets("sub", d).data == ("hf:org/name:s:train",)


def test_hub_url_naming_a_local_directory_is_refused(tmp_path, outside):
    """`hf:SOURCE` reads a local directory when SOURCE is one, so an entry's hf_hub_url could name
    any folder on the machine; an entry's hf_hub_url is a hub dataset id."""
    d = info(tmp_path / "data", abs={"hf_hub_url": str(outside.parent)}, up={"hf_hub_url": "../victim"})
    for name, url in (("abs", str(outside.parent)), ("up", "../victim")):
        message = refused(name, d)
        assert message.startswith(f"--dataset {name}: entry {name} of {d / 'dataset_info.json'}: hf_hub_url {url}: "), message
        assert "hub dataset id" in message


def test_script_url_stays_refused(tmp_path):
    d = info(tmp_path / "data", s={"script_url": "/tmp/x"})
    assert "script_url not supported here" in refused("s", d)


def test_cli_refuses_before_reading(tmp_path, outside, tiny_model_dir):
    """Through kto-precompute: exit 2, one line naming the entry, nothing written."""
    from click.testing import CliRunner

    from kto.precompute.cli import main

    d = info(tmp_path / "data", up={"file_name": "../victim/private.jsonl"})
    args = ["--dataset", "up", "--dataset-dir", str(d), "--model", str(tiny_model_dir), "--out", str(tmp_path / "c"), "--max-length", "64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "--dataset up: entry up of " in result.output and "must lie under --dataset-dir" in result.output, result.output
    assert not (tmp_path / "c" / "manifest.json").exists()


def test_a_file_name_starting_with_hf_under_the_current_directory_stays_local(tmp_path, monkeypatch):
    """`--dataset-dir .` with `file_name: hf:y.jsonl`: Path('.') / 'hf:y.jsonl' is 'hf:y.jsonl',
    which the reader took for a hub dataset (and named a --data flag never typed). A file_name
    always names a local file (the hub is hf_hub_url): it is given as its absolute path."""
    write_rows(tmp_path / "hf:y.jsonl", [ROW])
    info(tmp_path, mine={"file_name": "hf:y.jsonl"})
    monkeypatch.chdir(tmp_path)
    assert load_datasets("mine", Path(".")).data == (str(tmp_path / "hf:y.jsonl"),)
    assert load_datasets("mine", tmp_path).data == (str(tmp_path / "hf:y.jsonl"),)  # as before
