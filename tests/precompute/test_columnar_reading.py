"""Rows as `datasets` and Arrow write them, read as their JSON Lines would be: struct fields that
a merge of differing structs adds as null are not keys of the row's objects; datasets' `Json`
columns (Arrow `arrow.json`) are their JSON; a `ClassLabel` label column reads by its class
names. Also the `hf:` spelling's edges: a folder's hidden entries are not its data, a split slice
is refused, and offline a hub id is read from the local cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import one_line_error, precompute_args, run_precompute, write_rows

from kto.formats.errors import InputError
from kto.precompute.inputs import hub
from kto.precompute.inputs.examples import ColumnMap, ShareGPTMap
from kto.precompute.inputs.hub import COLUMNAR_READING, dataset_identity, parse_spec
from kto.precompute.inputs.records import input_identity, label_columns_of, read_examples, read_file

WEATHER = {
    "type": "function",
    "function": {"name": "weather", "description": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
TIME = {"type": "function", "function": {"name": "time", "description": "t", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def call_rows() -> list[dict]:
    """Calls of two tools whose arguments differ: one struct in Arrow holds both tools' keys."""
    rows = []
    for i in range(6):
        name, arguments = ("time", {"tz": "UTC"}) if i % 2 == 0 else ("weather", {"city": "Paris"})
        call = {"type": "function", "function": {"name": name, "arguments": arguments}}
        rows.append(
            {
                "id": f"r{i}",
                "prompt": [{"role": "user", "content": f"q{i}"}],
                "completion": [{"role": "assistant", "content": "", "tool_calls": [call]}],
                "label": i % 3 != 0,
                "tools": [WEATHER, TIME],
            }
        )
    return rows


def as_read(examples) -> list[tuple]:
    return [(e.id, e.prompt, e.completion, e.label, e.tools) for e in examples]


def test_merged_struct_nulls_are_not_keys(tmp_path):
    jsonl = write_rows(tmp_path / "calls.jsonl", call_rows())
    table = pa.Table.from_pylist(call_rows())
    assert pa.types.is_struct(table.schema.field("completion").type.value_type.field("tool_calls").type.value_type)
    assert table.to_pylist()[0]["completion"][0]["tool_calls"][0]["function"]["arguments"] == {"tz": "UTC", "city": None}
    pq.write_table(table, tmp_path / "calls.parquet")
    expected = as_read(read_examples([jsonl]))
    assert as_read(read_examples([tmp_path / "calls.parquet"])) == expected
    assert expected[0][2][0]["tool_calls"][0]["function"]["arguments"] == {"tz": "UTC"}
    assert expected[0][4] == (WEATHER, TIME)


def test_a_null_written_in_json_lines_stays(tmp_path):
    rows = call_rows()
    rows[0]["completion"][0]["tool_calls"][0]["function"]["arguments"] = {"tz": None}
    examples = read_examples([write_rows(tmp_path / "calls.jsonl", rows)])
    assert examples[0].completion[0]["tool_calls"][0]["function"]["arguments"] == {"tz": None}


def test_same_token_ids_from_jsonl_and_parquet(tmp_path, tiny_model_dir):
    jsonl = write_rows(tmp_path / "calls.jsonl", call_rows())
    pq.write_table(pa.Table.from_pylist(call_rows()), tmp_path / "calls.parquet")
    (tmp_path / "tpl.jinja").write_text(TEMPLATE)
    ids = []
    for data, out in ((jsonl, "a"), (tmp_path / "calls.parquet", "b")):
        args = ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / out), "--max-length", "512"]
        result = run_precompute(*args, "--chat-template", str(tmp_path / "tpl.jinja"))
        assert result.exit_code == 0, result.output
        shards = sorted((tmp_path / out).glob("shard-*.arrow"))
        rows = [r for s in shards for r in pa.ipc.open_file(s).read_all().to_pylist()]
        ids.append(sorted((r["id"], r["prompt_ids"], r["completion_ids"]) for r in rows))
    assert ids[0] == ids[1] and len(ids[0]) == len(call_rows())


def test_json_columns_read_as_their_json(tmp_path):
    """datasets' Json feature (TRL's tool layout, on_mixed_types="use_json") is stored as Arrow
    `arrow.json` text: it was read as the prompt's and completion's raw JSON text."""
    if not hasattr(pa, "json_"):
        pytest.skip("pyarrow without the arrow.json extension type")
    rows = call_rows()
    text = pa.array([json.dumps(r["prompt"]) for r in rows], pa.string())
    completion = pa.array([json.dumps(r["completion"]) for r in rows], pa.string())
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "prompt": pa.ExtensionArray.from_storage(pa.json_(), text),
            "completion": pa.ExtensionArray.from_storage(pa.json_(), completion),
            "label": [r["label"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "json.parquet")
    expected = as_read(read_examples([write_rows(tmp_path / "calls.jsonl", [{k: v for k, v in r.items() if k != "tools"} for r in rows])]))
    assert as_read(read_examples([tmp_path / "json.parquet"])) == expected


def test_nested_json_declared_by_the_features_metadata(tmp_path):
    """A string field that the `huggingface` schema metadata declares Json (a tool's
    `properties`, a call's `arguments`), inside lists of structs: read as its JSON."""
    rows = call_rows()
    flat = []
    for r in rows:
        call = r["completion"][0]["tool_calls"][0]
        function = {**call["function"], "arguments": json.dumps(call["function"]["arguments"])}
        completion = [{**r["completion"][0], "tool_calls": [{**call, "function": function}]}]
        flat.append({**r, "completion": completion, "tools": [json.dumps(t) for t in r["tools"]]})
    table = pa.Table.from_pylist(flat)
    arguments = {"_type": "Json"}
    call_feature = {"type": {"dtype": "string", "_type": "Value"}, "function": {"name": {"dtype": "string", "_type": "Value"}, "arguments": arguments}}
    message = {
        "role": {"dtype": "string", "_type": "Value"},
        "content": {"dtype": "string", "_type": "Value"},
        "tool_calls": {"feature": call_feature, "_type": "List"},
    }
    features = {"completion": {"feature": message, "_type": "List"}, "tools": {"feature": {"_type": "Json"}, "_type": "List"}}
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, tmp_path / "declared.parquet")
    expected = as_read(read_examples([write_rows(tmp_path / "calls.jsonl", rows)]))
    assert as_read(read_examples([tmp_path / "declared.parquet"])) == expected


def class_label_parquet(path: Path, names: list[str], indices: list[int]) -> Path:
    table = pa.table({"prompt": [f"q{i}" for i in range(len(indices))], "completion": [f"answer {i}" for i in range(len(indices))], "label": indices})
    features = {
        "prompt": {"dtype": "string", "_type": "Value"},
        "completion": {"dtype": "string", "_type": "Value"},
        "label": {"names": names, "_type": "ClassLabel"},
    }
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}), path)
    return path


@pytest.mark.parametrize("names", [["desirable", "undesirable"], ["undesirable", "desirable"], ["no", "yes"]])
def test_class_label_reads_by_its_names(tmp_path, names):
    """The index was read as the label: ClassLabel(names=["desirable", "undesirable"]) trained
    every desirable row (index 0) as undesirable."""
    path = class_label_parquet(tmp_path / "cl.parquet", names, [0, 1, 1, 0, 1])
    desirable = names.index("desirable") if "desirable" in names else names.index("yes")
    assert [e.label for e in read_examples([path])] == [i == desirable for i in [0, 1, 1, 0, 1]]


def test_class_label_of_other_names_is_refused_where_read(tmp_path):
    """Refused at the row whose label is read from it, by its class name and its ClassLabel."""
    path = class_label_parquet(tmp_path / "cl.parquet", ["bad", "good"], [1, 0, 1])
    with pytest.raises(InputError) as info:
        read_examples([path])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cl.parquet: row 1: label 'good' (ClassLabel index 1) is not boolean-like")


def test_class_label_names_read_row_by_row(tmp_path):
    """A class that is a label word reads as one; the first row holding another is refused."""
    path = class_label_parquet(tmp_path / "cl.parquet", ["no", "yes", "maybe"], [1, 0, 1, 2])
    with pytest.raises(InputError) as info:
        read_examples([path])
    assert str(info.value).startswith("cl.parquet: row 4: label 'maybe' (ClassLabel index 2) is not boolean-like")
    short = class_label_parquet(tmp_path / "short.parquet", ["no", "yes", "maybe"], [1, 0, 1])
    assert [e.label for e in read_examples([short])] == [True, False, True]


def topics_parquet(path: Path, columns: dict, names: list[str]) -> Path:
    """`columns` beside a `label` column that is a ClassLabel of `names` (topics, not labels)."""
    count = len(next(iter(columns.values())))
    table = pa.table({**columns, "label": [i % len(names) for i in range(count)]})
    features = {name: {"dtype": "bool" if name == "good" else "string", "_type": "Value"} for name in columns}
    features["label"] = {"names": names, "_type": "ClassLabel"}
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}), path)
    return path


def test_class_label_not_read_as_the_label_is_not_refused(tmp_path):
    """--label-column good: the `label` ClassLabel of sentiments is no label that is read (it
    was refused for its names); its cells stay the indices they were."""
    good = [i % 3 != 0 for i in range(12)]
    columns = {"prompt": [f"q{i}" for i in range(12)], "completion": ["a"] * 12, "good": good}
    path = topics_parquet(tmp_path / "cl_other.parquet", columns, ["negative", "neutral", "positive"])
    assert [e.label for e in read_examples([path], ColumnMap(label="good"))] == good
    labels = label_columns_of(ColumnMap(label="good"), ShareGPTMap())
    assert "label" not in labels
    assert [r["label"] for _, r in read_file(path, labels)[1]][:4] == [0, 1, 2, 0]


def test_class_label_beside_pairs_is_not_refused(tmp_path):
    """Paired rows read no label column: a `label` ClassLabel of topics beside them is not read."""
    columns = {"prompt": [f"q{i}" for i in range(6)], "chosen": ["good"] * 6, "rejected": ["bad"] * 6}
    examples = read_examples([topics_parquet(tmp_path / "cl_pair.parquet", columns, ["math", "code", "chat"])])
    assert [e.label for e in examples] == [True, False] * 6


def test_class_label_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"prompt": datasets.Value("string"), "completion": datasets.Value("string"), "label": datasets.ClassLabel(names=["desirable", "undesirable"])}
    )
    rows = {"prompt": ["a", "b", "c"], "completion": ["x", "y", "z"], "label": [0, 1, 0]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    assert [e.label for e in read_examples([tmp_path / "saved"])] == [True, False, True]


def test_merged_structs_through_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "calldir"
    folder.mkdir()
    datasets.Dataset.from_list(call_rows()).to_parquet(str(folder / "train.parquet"))
    expected = as_read(read_examples([write_rows(tmp_path / "calls.jsonl", call_rows())]))
    assert as_read(read_examples([folder / "train.parquet"])) == expected
    assert [row[1:] for row in as_read(read_examples([f"hf:{folder}:train"]))] == [row[1:] for row in expected]


def test_hidden_entries_of_a_folder_are_not_its_data(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "data"
    (folder / ".git").mkdir(parents=True)
    write_rows(folder / "train.jsonl", call_rows())
    before = dataset_identity(f"hf:{folder}:train")
    (folder / ".git" / "index").write_bytes(b"changed by git status")
    (folder / ".gitattributes").write_text("*.parquet filter=lfs\n")
    (folder / ".gitignore").write_text("*.tmp\n")
    (folder / ".cache" / "huggingface").mkdir(parents=True)  # huggingface-cli download --local-dir's metadata
    (folder / ".cache" / "huggingface" / "train.jsonl.metadata").write_text("abc\n")
    assert dataset_identity(f"hf:{folder}:train") == before
    (folder / "train.jsonl").write_text((folder / "train.jsonl").read_text().replace("q1", "q one"))
    assert dataset_identity(f"hf:{folder}:train") != before


def test_split_slices_are_refused():
    for text in ("hf:org/name:train[:10]", "hf:org/name:default:train[10%:]"):
        with pytest.raises(InputError) as info:
            parse_spec(text)
        assert str(info.value).startswith(f"--data {text}: split slices are not read") and "--max-samples" in str(info.value)


def test_offline_reads_the_cached_commit(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub is not asked offline")

    monkeypatch.setattr("huggingface_hub.HfApi.dataset_info", no_hub)
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda source, config: SimpleNamespace(hash="c" * 40))
    assert dataset_identity("hf:org/name:train")["revision"] == "c" * 40

    def nothing_cached(source, config):
        raise ConnectionError(f"Couldn't reach '{source}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset_builder", nothing_cached)
    with pytest.raises(InputError) as info:
        dataset_identity("hf:org/name:train")
    assert str(info.value).startswith("--data hf:org/name:train: not in the local cache (offline: ")


def test_hidden_data_a_readme_names_is_hashed(tmp_path):
    """`datasets` reads a hidden path that the README's `configs:` names: its bytes are rows."""
    pytest.importorskip("datasets")
    folder = tmp_path / "hid"
    (folder / ".data").mkdir(parents=True)
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: .data/train.jsonl\n---\n")
    write_rows(folder / ".data" / "train.jsonl", call_rows())
    before = dataset_identity(f"hf:{folder}:train")
    assert len(read_examples([f"hf:{folder}:train"])) == len(call_rows())
    write_rows(folder / ".data" / "train.jsonl", call_rows()[:-1])
    assert dataset_identity(f"hf:{folder}:train") != before


def test_columnar_inputs_name_their_reading(tmp_path):
    """Parquet, Arrow and `datasets` inputs are read by columnar_reader: their identity says so
    (a cache an earlier reading made of them is not reused); a JSON Lines file's is as before."""
    jsonl = write_rows(tmp_path / "calls.jsonl", call_rows())
    pq.write_table(pa.Table.from_pylist(call_rows()), tmp_path / "calls.parquet")
    with pa.ipc.new_file(tmp_path / "calls.arrow", pa.Table.from_pylist(call_rows()).schema) as writer:
        writer.write_table(pa.Table.from_pylist(call_rows()))
    assert set(input_identity(jsonl)) == {"name", "sha256"}
    for path in (tmp_path / "calls.parquet", tmp_path / "calls.arrow"):
        assert input_identity(path)["reading"] == COLUMNAR_READING
    if importlib.util.find_spec("datasets") is not None:
        assert dataset_identity(f"hf:{tmp_path}:train")["reading"] == COLUMNAR_READING


def test_a_cache_of_the_earlier_reading_is_not_reused(tmp_path, tiny_model_dir, monkeypatch):
    """A cache made before the reading was recorded (its inputs without `reading`) held
    ClassLabel indices read as labels: the rerun is refused, not "already complete"."""
    path = class_label_parquet(tmp_path / "cl.parquet", ["desirable", "undesirable"], [0, 1] * 6)
    args = precompute_args(path, tiny_model_dir, tmp_path / "c")
    monkeypatch.setattr(hub, "COLUMNAR_READING", None)  # the earlier identity: no `reading`
    assert run_precompute(*args).exit_code == 0
    monkeypatch.undo()
    line = one_line_error(run_precompute(*args))
    assert "differs in inputs cl.parquet (reading (absent) there, " in line and "--overwrite" in line
