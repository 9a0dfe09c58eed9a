"""--data through `datasets`: a local directory of data files and save_to_disk copies (no hub here;
the hub path is the same code with another source)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import text_rows

import kto.precompute
from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest
from kto.precompute.config import PrecomputeConfig
from kto.precompute.inputs.hub import dataset_identity, dataset_records, one_run, parse_spec
from kto.precompute.inputs.records import input_identity, read_examples


@pytest.fixture(autouse=True, scope="module")  # before the module's own fixtures
def datasets():
    """Every test here reads through `datasets`. Skipped when a test runs, not imported at
    collection (about 1 s, which every xdist worker paid, also for runs that select none of these)."""
    return pytest.importorskip("datasets")


ROWS = [
    {"prompt": "Hi", "completion": "Hello", "label": True},
    {"prompt": "Q", "completion": "A", "label": False},
    {"conversations": None, "prompt": "Q2", "completion": "A2", "label": True},
]


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "mydata"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    return d


def error_of(spec) -> str:
    with pytest.raises(InputError) as info:
        read_examples([spec])
    assert "\n" not in str(info.value)
    return str(info.value)


def test_spellings():
    spec = parse_spec("hf:org/name:train")
    assert (spec.source, spec.config, spec.split) == ("org/name", None, "train")
    spec = parse_spec("hf:org/name:default:test")
    assert (spec.source, spec.config, spec.split) == ("org/name", "default", "test")
    assert "expected hf:ID:SPLIT" in _raises(lambda: parse_spec("hf:a:b:c:d"))


def _raises(fn) -> str:
    with pytest.raises(InputError) as info:
        fn()
    return str(info.value)


def test_local_directory_reads_like_the_file(data_dir):
    via_datasets = read_examples([f"hf:{data_dir}:train"])
    direct = read_examples([data_dir / "train.jsonl"])
    assert [(e.prompt, e.completion, e.label) for e in via_datasets] == [(e.prompt, e.completion, e.label) for e in direct]
    assert [e.id for e in via_datasets] == ["mydata:train:1", "mydata:train:2"]
    assert via_datasets[1].source == "mydata:train: row 2"


def test_save_to_disk_dataset_and_dict(tmp_path, datasets):
    ds = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "conversations"} for r in ROWS])
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "dd"))
    assert [e.prompt for e in read_examples([tmp_path / "saved"])] == ["Hi", "Q", "Q2"]
    assert [e.id for e in read_examples([f"hf:{tmp_path / 'dd'}:test"])] == ["dd:test:1", "dd:test:2"]
    assert "missing split: this directory holds train, test" in error_of(f"hf:{tmp_path / 'dd'}")
    assert "no split 'nope' (available: train, test)" in error_of(f"hf:{tmp_path / 'dd'}:nope")


def test_identity_follows_content_not_place(data_dir, tmp_path):
    before = input_identity(f"hf:{data_dir}:train")
    assert before["name"] == "mydata:train" and before["split"] == "train" and len(before["sha256"]) == 64
    moved = tmp_path / "elsewhere" / "mydata"
    moved.parent.mkdir()
    data_dir.rename(moved)
    assert input_identity(f"hf:{moved}:train") == before
    (moved / "train.jsonl").write_text((moved / "train.jsonl").read_text().replace("Hello", "Howdy"))
    assert input_identity(f"hf:{moved}:train")["sha256"] != before["sha256"]


def test_bad_sources_get_one_line(data_dir):
    assert "missing split; write hf:" in error_of(f"hf:{data_dir}")
    assert "no split 'nope' (available: train)" in error_of(f"hf:{data_dir}:nope")
    message = error_of("hf:kto-offline-tests/no-such-dataset-7f3a:train")
    assert message.startswith("--data hf:kto-offline-tests/no-such-dataset-7f3a:train: unknown dataset id")


def test_row_errors_name_the_dataset_and_row(data_dir):
    (data_dir / "train.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({**ROWS[1], "label": "perhaps"}) + "\n")
    assert error_of(f"hf:{data_dir}:train").startswith("mydata:train: row 2: label 'perhaps' is not boolean-like")


def test_a_file_that_breaks_after_the_first_rows_gets_one_line(data_dir):
    """Streaming parses a file lazily: its parse error came out of the row loop, past _open's
    one-line refusal, as a pyarrow traceback (datasets before 4.7 did so for a label column
    that changes type too)."""
    with (data_dir / "train.jsonl").open("a") as f:
        f.write('{"prompt": broken\n')
    # datasets 4.7 parses the file while listing its splits; later ones while reading rows.
    assert error_of(f"hf:{data_dir}:train").startswith(
        (f"--data hf:{data_dir}:train: cannot read its rows (", f"--data hf:{data_dir}:train: cannot list the splits (")
    )


def _fake_hub(monkeypatch, datasets, shas) -> list:
    """The hub answering each dataset_info with `shas()` (its current commit); returns the
    revisions `load_dataset` was asked for. Its rows: conftest's text_rows."""
    read_at = []

    def load_dataset(source, config, split, streaming, revision):
        read_at.append(revision)
        return datasets.Dataset.from_list(text_rows())

    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", lambda self, repo_id, **kw: SimpleNamespace(sha=shas()))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda *args, **kwargs: ["train"])
    return read_at


def test_each_run_records_the_commit_the_hub_resolves_then(tmp_path, tiny_model_dir, datasets, monkeypatch):
    """The sha was resolved once per process: a notebook's second kto.precompute.run read and
    recorded the commit of the first, after the dataset had changed on the hub."""
    hub = {"sha": "a" * 40}
    read_at = _fake_hub(monkeypatch, datasets, lambda: hub["sha"])
    recorded = []
    for n, sha in enumerate(["a" * 40, "b" * 40]):
        hub["sha"] = sha
        result = kto.precompute.run(PrecomputeConfig(data="hf:org/name:train", model=str(tiny_model_dir), out=tmp_path / f"c{n}", max_length=64))
        recorded.append(read_manifest(result.cache).content.inputs[0]["revision"])
    assert recorded == ["a" * 40, "b" * 40]
    assert read_at == recorded  # the rows read are the rows fingerprinted


def test_one_run_resolves_once_and_reads_that_commit(datasets, monkeypatch):
    """Inside one_run every read of a hub id (the manifest's identity, the read, the check that
    compares them) names one commit, even if the hub moves meanwhile; the next run resolves anew."""
    shas = iter(["a" * 40, "b" * 40])
    read_at = _fake_hub(monkeypatch, datasets, lambda: next(shas))
    for sha in ("a" * 40, "b" * 40):
        with one_run():
            assert [dataset_identity("hf:org/name:train")["revision"] for _ in range(2)] == [sha, sha]
            assert len(list(dataset_records(parse_spec("hf:org/name:train")))) == len(text_rows())
        assert read_at[-1] == sha


def test_a_reader_left_half_read_holds_no_setting(tmp_path, datasets):
    """The bars are off only while `datasets` works, not across a yield: a reader stopped early
    and closed later by the garbage collector turned them back on in the middle of whatever ran
    then (once in a full run on Python 3.13, the test below it failing)."""
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "saved"))
    spec = parse_spec(str(tmp_path / "saved"), "--data")
    datasets.enable_progress_bars()
    reader = dataset_records(spec)
    assert next(reader)[0] == 1
    assert datasets.is_progress_bar_enabled()  # suspended between rows: as they were
    datasets.disable_progress_bars()
    try:
        reader.close()
        assert not datasets.is_progress_bar_enabled()  # closing it late changes nothing
    finally:
        datasets.enable_progress_bars()


def test_reading_leaves_the_progress_bars_as_they_were(tmp_path, datasets):
    """A precompute turned `datasets`' progress bars off for the rest of the session."""
    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "saved"))
    datasets.enable_progress_bars()  # the default (a read by an earlier test turned them off)
    read_examples([tmp_path / "saved"])
    assert datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        read_examples([tmp_path / "saved"])
        assert not datasets.is_progress_bar_enabled()  # a user's own choice is kept too
    finally:
        datasets.enable_progress_bars()
