"""Files the reader used to misread or refuse for the wrong reason: a folder entry's unreadable
files, invalid UTF-8 in a Parquet or Arrow string column, a CSV field over csv's default limit,
a directory as --data, and a one-line JSON object in a .json file."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import precompute_args, text_rows, write_rows

from kto.formats.errors import InputError
from kto.precompute.cli import main
from kto.precompute.inputs.dataset_info import load_datasets
from kto.precompute.inputs.records import check_input_path, input_records, read_examples

ENTRY = {"demo": {"file_name": "demo", "formatting": "alpaca", "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}}}


def alpaca_rows(n: int) -> list[dict]:
    return [{"instruction": f"Question {i}?", "output": f"Answer {i}.", "kto_tag": i % 2 == 0} for i in range(n)]


def folder_entry(tmp_path):
    """A dataset_info.json whose entry `demo` is the folder `demo`, holding part-0.jsonl (2 rows)."""
    root = tmp_path / "data"
    (root / "demo").mkdir(parents=True)
    (root / "dataset_info.json").write_text(json.dumps(ENTRY))
    write_rows(root / "demo" / "part-0.jsonl", alpaca_rows(2))
    return root


# ---- 1. a folder entry's files -------------------------------------------------------------------


def test_a_folder_entry_refuses_files_it_cannot_read_by_name(tmp_path):
    root = folder_entry(tmp_path)
    for i in (1, 2):
        (root / "demo" / f"part-{i}.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in alpaca_rows(4))))
    with pytest.raises(InputError) as e:
        load_datasets("demo", root)
    message = str(e.value)
    assert "\n" not in message and "demo" in message and "part-1.jsonl.gz, part-2.jsonl.gz" in message and "part-0.jsonl" not in message


def test_a_folder_entry_refuses_a_subfolder(tmp_path):
    root = folder_entry(tmp_path)
    (root / "demo" / "more").mkdir()
    write_rows(root / "demo" / "more" / "part-9.jsonl", alpaca_rows(2))
    with pytest.raises(InputError, match=r"more/"):
        load_datasets("demo", root)


def test_a_folder_entry_skips_readmes_and_dotfiles(tmp_path):
    root = folder_entry(tmp_path)
    for name in ("README.md", "README", "NOTES.md", ".DS_Store", ".gitattributes", "LICENSE"):
        (root / "demo" / name).write_text("not data")
    (root / "demo" / ".cache").mkdir()
    write_rows(root / "demo" / "part-1.jsonl", alpaca_rows(2))
    entry = load_datasets("demo", root)
    assert entry.data == (str(root / "demo" / "part-0.jsonl"), str(root / "demo" / "part-1.jsonl"))


def test_a_folder_entry_reads_data_files_whatever_their_names(tmp_path):
    """Only files that are no data are skipped by name: license_qa.jsonl and .extra.jsonl are
    read (they were dropped silently by a skip that looked at the name first)."""
    root = folder_entry(tmp_path)
    for name in ("license_qa.jsonl", ".extra.jsonl", "readme_rows.jsonl"):
        write_rows(root / "demo" / name, alpaca_rows(2))
    (root / "demo" / ".gitkeep").write_text("")
    (root / "demo" / "LICENSE.txt").write_text("not data")
    entry = load_datasets("demo", root)
    assert sorted(Path(p).name for p in entry.data) == [".extra.jsonl", "license_qa.jsonl", "part-0.jsonl", "readme_rows.jsonl"]


# ---- 2. invalid UTF-8 in a Parquet or Arrow string column ----------------------------------------


def invalid_utf8_table() -> pa.Table:
    rows = text_rows()
    completions = [r["completion"].encode() for r in rows]
    completions[6] = b"bad \xff byte"  # row 7
    return pa.table(
        {
            "prompt": pa.array([r["prompt"] for r in rows]),
            "completion": pa.array(completions, pa.binary()).view(pa.string()),
            "label": pa.array([r["label"] for r in rows]),
        }
    )


def write_table(path, table: pa.Table) -> None:
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=4)  # row 7 is in the second batch
    else:
        with pa.ipc.new_file(path, table.schema) as writer:
            writer.write_table(table, max_chunksize=4)


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_invalid_utf8_in_a_string_column_names_file_row_and_column(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    write_table(path, invalid_utf8_table())
    with pytest.raises(InputError) as e:
        read_examples([path])
    message = str(e.value)
    assert message.startswith(f"data{suffix}: row 7") and "completion" in message and "not valid UTF-8" in message, message


def test_invalid_utf8_in_parquet_leaves_no_output_behind(tmp_path, tiny_model_dir):
    path = tmp_path / "data.parquet"
    write_table(path, invalid_utf8_table())
    result = CliRunner().invoke(main, precompute_args(path, tiny_model_dir, tmp_path / "out"))
    assert result.exit_code == 2 and "row 7" in result.output and "not valid UTF-8" in result.output, result.output
    assert not (tmp_path / "out").exists()


# ---- 3. a CSV field over csv's default limit -----------------------------------------------------


def test_a_csv_field_over_the_default_limit_is_read(tmp_path):
    previous = csv.field_size_limit()
    path = tmp_path / "big.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["prompt", "completion", "label"])
        writer.writeheader()
        writer.writerow({"prompt": "Say a lot:", "completion": " " + "x" * 200_000, "label": "true"})
        writer.writerow({"prompt": "Say little:", "completion": " y", "label": "false"})
    examples = read_examples([path])
    assert len(examples) == 2 and len(examples[0].completion) == 200_001
    assert csv.field_size_limit() == previous  # the process-wide limit is put back


# ---- 4. misleading refusals ----------------------------------------------------------------------


def test_a_directory_as_data_says_how_to_read_it(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    write_rows(folder / "part.jsonl", text_rows())
    with pytest.raises(InputError, match=r"hf:.*folder:SPLIT"):
        check_input_path(folder)


def test_a_one_line_json_object_reads_as_one_document(tmp_path):
    one_line = tmp_path / "one.json"
    one_line.write_text(json.dumps({"train": text_rows()}) + "\n")
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps({"train": text_rows()}, indent=2))
    messages = []
    for path in (one_line, pretty):
        with pytest.raises(InputError) as e:
            list(input_records(path)[2])
        messages.append(str(e.value).split(": ", 1)[1])
    assert messages == ["expected a JSON array of objects, got an object"] * 2


def test_one_row_of_json_lines_in_a_json_file_is_a_row(tmp_path):
    """What Dataset.to_json writes for one row: an object on its only line, which datasets and
    LLaMA-Factory read as a row (only an object of lists, a document of splits, is refused)."""
    path = tmp_path / "one.json"
    path.write_text(json.dumps(text_rows()[0]) + "\n")
    assert [row for row, _ in input_records(path)[2]] == [1]


def test_json_lines_in_a_json_file_still_read_by_line(tmp_path):
    path = write_rows(tmp_path / "lines.json", text_rows())
    assert [row for row, _ in input_records(path)[2]] == list(range(1, len(text_rows()) + 1))
