"""--dataset NAME --dataset-dir DIR: a LLaMA-Factory dataset_info.json entry, read completely
(file_name, formatting, columns, tags, ranking), the same as the old way for the same rows."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_rows

from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main
from kto.precompute.inputs.alpaca import AlpacaMap
from kto.precompute.inputs.dataset_info import load_datasets
from kto.precompute.inputs.examples import ShareGPTMap
from kto.precompute.inputs.records import read_examples
from kto.precompute.inputs.sharegpt import load_sharegpt_info

DATA = Path(os.environ.get("KTO_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))

# LLaMA-Factory's own entries for its two demo files (data/dataset_info.json), verbatim.
LF_INFO = {
    "kto_en_demo": {
        "file_name": "kto_en_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    },
    "dpo_en_demo": {
        "file_name": "dpo_en_demo.json",
        "ranking": True,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    },
    "alpaca_kto": {
        "file_name": "alpaca/",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history", "kto_tag": "kto_tag", "system": "system"},
    },
    "alpaca_pairs": {"file_name": "pairs.jsonl", "ranking": True, "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}},
}


def real_rows(name: str, n: int) -> list:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path}: real data absent (set KTO_SHARED_DATA, or put shared/ beside the repository)")
    return json.loads(path.read_text())[:n]


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    (d / "alpaca").mkdir(parents=True)
    (d / "dataset_info.json").write_text(json.dumps(LF_INFO, indent=2))
    for name in ("kto_en_demo.json", "dpo_en_demo.json"):
        (d / name).write_text(json.dumps(real_rows(name, 6)))
    write_rows(
        d / "alpaca" / "part-1.jsonl",
        [
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "kto_tag": True, "system": "Be brief."},
            {"instruction": "Name a colour.", "input": "", "output": "Seven.", "kto_tag": False, "history": [["Hi", "Hello!"]]},
        ],
    )
    write_rows(d / "pairs.jsonl", [{"question": "Capital of France?", "good": "Paris.", "bad": "Rome."}])
    return d


@pytest.mark.parametrize("name", ["kto_en_demo", "dpo_en_demo"])
def test_a_real_entry_reads_as_the_old_way_does(dataset_dir, name):
    entry = load_datasets(name, dataset_dir)
    assert entry.data == (str(dataset_dir / LF_INFO[name]["file_name"]),) and entry.alpaca is None
    assert entry.ranking is (name == "dpo_en_demo")
    old = read_examples([dataset_dir / LF_INFO[name]["file_name"]], sharegpt=load_sharegpt_info(f"{dataset_dir / 'dataset_info.json'}#{name}"))
    new = read_examples(entry.data, sharegpt=entry.sharegpt, alpaca=entry.alpaca)
    assert new == old and len(new) == (12 if name == "dpo_en_demo" else 6)


def test_alpaca_entries_follow_llama_factorys_converter(dataset_dir):
    """instruction + "\\n" + input is the user turn after the history pairs; system goes first;
    output is the completion, kto_tag its label; ranking rows give chosen and rejected."""
    entry = load_datasets("alpaca_kto", dataset_dir)
    assert entry.data == (str(dataset_dir / "alpaca" / "part-1.jsonl"),)  # a folder: its data files
    first, second = read_examples(entry.data, sharegpt=entry.sharegpt, alpaca=entry.alpaca)
    assert first.prompt == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add the numbers.\n2 and 3"})
    assert first.completion == ({"role": "assistant", "content": "5"},) and first.label is True
    assert second.prompt == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."})
    assert second.label is False
    pairs = load_datasets("alpaca_pairs", dataset_dir)
    assert pairs.alpaca == AlpacaMap(prompt="question", query="", chosen="good", rejected="bad")
    chosen, rejected = read_examples(pairs.data, alpaca=pairs.alpaca)
    assert (chosen.label, rejected.label) == (True, False) and chosen.prompt == rejected.prompt == ({"role": "user", "content": "Capital of France?"},)
    assert (chosen.completion[0]["content"], rejected.completion[0]["content"]) == ("Paris.", "Rome.")


ALPACA_ROWS = [
    {"instruction": "Translate INSTR0", "input": "INPUTTEXT0", "output": "out0", "kto_tag": True, "history": [["HISTQ", "HISTA"]]},
    {"instruction": "Translate INSTR1", "input": "", "output": "out1", "kto_tag": False},
]


@pytest.mark.parametrize(
    ("columns", "user_turn", "history"),
    [
        # LLaMA-Factory's parser: with `columns`, a name the map leaves out is None (set_attr's
        # obj.get(key, None)), so neither `input` nor `history` is read.
        ({"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}, "Translate INSTR0", ()),
        ({"prompt": "instruction", "query": "input", "response": "output"}, "Translate INSTR0\nINPUTTEXT0", ()),
        ({"prompt": "instruction", "history": "history"}, "Translate INSTR0", ("HISTQ", "HISTA")),
        # Without `columns`: DatasetAttr's defaults, query "input" and history None.
        (None, "Translate INSTR0\nINPUTTEXT0", ()),
    ],
)
def test_an_alpaca_entry_reads_the_query_and_history_llama_factory_reads(tmp_path, columns, user_turn, history):
    write_rows(tmp_path / "alp.jsonl", ALPACA_ROWS)
    entry = {"file_name": "alp.jsonl", **({"columns": columns} if columns else {})}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alp": entry}))
    loaded = load_datasets("alp", tmp_path)
    first, second = read_examples(loaded.data, sharegpt=loaded.sharegpt, alpaca=loaded.alpaca)
    assert [m["content"] for m in first.prompt] == [*history, user_turn]
    assert second.prompt == ({"role": "user", "content": "Translate INSTR1"},)


def test_a_bad_tag_is_named_alone(tmp_path):
    """Only the unknown key: the valid tags and columns beside it were listed as unknown too."""
    entry = {"file_name": "x.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "kto_tag": "kto_tag"}}
    (tmp_path / "x.json").write_text("[]")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {**entry, "tags": {"role_tag": "from", "bogus_tag": "x"}}}))
    with pytest.raises(InputError) as caught:
        load_datasets("d", tmp_path)
    assert str(caught.value).endswith(
        ": tags bogus_tag not supported here (known: "
        + ", ".join(sorted(["role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"]))
        + ")"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"file_name": "x.json", "num_samples": 10},
            r"num_samples \(LLaMA-Factory.s sample of that many rows of the entry\) is not supported here: leave it out and give max_samples: 10",
        ),
        ({"file_name": "x.json", "ranking": True, "columns": {"kto_tag": "label"}}, "ranking is true, so rows are chosen/rejected pairs"),
        ({"file_name": "x.json", "formatting": "openai"}, "formatting 'openai': alpaca or sharegpt"),
        ({"file_name": "missing.json"}, "file_name missing.json: no such file in"),
        ({"file_name": "x.json", "columns": {"images": "images"}}, "columns images not supported here"),
    ],
)
def test_entries_that_cannot_be_read_as_written_are_one_line(tmp_path, entry, message):
    (tmp_path / "x.json").write_text("[]")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": entry}))
    with pytest.raises(InputError, match=message):
        load_datasets("d", tmp_path)
    with pytest.raises(InputError, match=r"--dataset nope: entry nope of .*: no such entry \(entries: d\)"):
        load_datasets("nope", tmp_path)


def test_the_cli_follows_file_name_and_makes_the_old_ways_cache(dataset_dir, tmp_path, tiny_model_dir):
    """No --data: the entry's file is read. The fingerprint equals the one of --data FILE
    --sharegpt-info dataset_info.json#NAME, so the old way's caches keep theirs."""
    common = ["--model", str(tiny_model_dir), "--max-length", "64", "--batch-tokens", "512"]
    new = CliRunner().invoke(main, ["--dataset", "kto_en_demo", "--dataset-dir", str(dataset_dir), "--out", str(tmp_path / "new"), *common])
    assert new.exit_code == 0, new.output
    old_args = ["--data", str(dataset_dir / "kto_en_demo.json"), "--sharegpt-info", f"{dataset_dir / 'dataset_info.json'}#kto_en_demo"]
    old = CliRunner().invoke(main, [*old_args, "--out", str(tmp_path / "old"), *common])
    assert old.exit_code == 0, old.output
    assert read_manifest(tmp_path / "new").fingerprint == read_manifest(tmp_path / "old").fingerprint
    assert read_manifest(tmp_path / "new").counts.rows == 6


def test_a_system_column_the_entry_does_not_name_is_not_read(tmp_path):
    """LLaMA-Factory's `columns.system` (and `tools`) default to None: an entry that does not
    name a system column reads none, whatever the rows hold; one that names it does. file_sha1,
    optional in LLaMA-Factory and only warned about there, is accepted."""
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}], "kto_tag": True, "system": "Unmapped."}
    alpaca_row = {"instruction": "Hi", "output": "Yo", "kto_tag": True, "system": "Unmapped."}
    (tmp_path / "sg.json").write_text(json.dumps([row, row]))
    (tmp_path / "al.json").write_text(json.dumps([alpaca_row, alpaca_row]))
    sg = {"file_name": "sg.json", "formatting": "sharegpt", "columns": {"messages": "conversations", "kto_tag": "kto_tag"}}
    al = {"file_name": "al.json", "file_sha1": "0" * 40, "columns": {"prompt": "instruction", "response": "output", "kto_tag": "kto_tag"}}
    info = {
        "sg": sg,
        "al": al,
        "sg_sys": {**sg, "columns": {**sg["columns"], "system": "system"}},
        "al_sys": {**al, "columns": {**al["columns"], "system": "system"}},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    for name in info:
        entry = load_datasets(name, tmp_path)
        example, _ = read_examples(entry.data, sharegpt=entry.sharegpt, alpaca=entry.alpaca)
        system = [m["content"] for m in example.prompt if m["role"] == "system"]
        assert system == (["Unmapped."] if name.endswith("_sys") else []), name


def test_a_ranking_entry_in_openai_tags_whose_conversation_is_named_messages_reads_its_pairs(tmp_path):
    """A `ranking: true` ShareGPT entry mapping `messages: messages` with role/content tags was
    read as an unpaired `messages` row and refused ("conversation has no assistant turn"); it is
    the entry's paired shape: each row is a chosen and a rejected example of one prompt."""
    rows = [
        {
            "messages": [{"role": "user", "content": f"q{i}"}],
            "chosen": {"role": "assistant", "content": "yes"},
            "rejected": {"role": "assistant", "content": "no"},
        }
        for i in range(2)
    ]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    entry = {"file_name": "p.json", "formatting": "sharegpt", "ranking": True, "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"p": {**entry, "tags": tags}}))
    found = load_datasets("p", tmp_path)
    examples = read_examples(found.data, sharegpt=found.sharegpt, alpaca=found.alpaca)
    assert [(e.id, e.label, e.prompt[-1]["content"], e.completion[0]["content"]) for e in examples] == [
        ("p.json:1:chosen", True, "q0", "yes"),
        ("p.json:1:rejected", False, "q0", "no"),
        ("p.json:2:chosen", True, "q1", "yes"),
        ("p.json:2:rejected", False, "q1", "no"),
    ]


# ---- an entry's map reads every row, whatever its conversation column is named -----------------

OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


def entry_examples(tmp_path, entry: dict, rows: list) -> list:
    """The rows read through `entry`, both ways: --dataset and --sharegpt-info FILE#NAME."""
    write_rows(tmp_path / "rows.jsonl", rows)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"e": {"file_name": "rows.jsonl", **entry}}))
    found = load_datasets("e", tmp_path)
    examples = read_examples(found.data, sharegpt=found.sharegpt, alpaca=found.alpaca)
    if entry.get("formatting") == "sharegpt":
        smap = load_sharegpt_info(f"{tmp_path / 'dataset_info.json'}#e")
        assert read_examples(found.data, sharegpt=smap) == examples
    return examples


def entry_error(tmp_path, entry: dict, rows: list) -> str:
    with pytest.raises(InputError) as caught:
        entry_examples(tmp_path, entry, rows)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def chat(*turns: tuple[str, str], role: str = "role", content: str = "content") -> list:
    return [{role: r, content: c} for r, c in turns]


def test_an_entry_naming_its_conversation_messages_reads_its_own_kto_tag(tmp_path):
    """`messages: messages` with `kto_tag: thumbs`: the label is `thumbs`, as the entry says; a
    `label` column beside it (here the opposite) is not read. It was read as a plain `messages`
    row, labelled by `label`: every label silently inverted."""
    rows = [{"messages": chat(("user", f"q{i}"), ("assistant", f"a{i}")), "thumbs": i == 0, "label": i != 0} for i in range(2)]
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "thumbs"}, "tags": OPENAI_TAGS}
    assert [e.label for e in entry_examples(tmp_path, entry, rows)] == [True, False]
    without = [{k: v for k, v in row.items() if k != "thumbs"} for row in rows]
    assert entry_error(tmp_path, entry, without).startswith(
        "rows.jsonl: row 1: missing column 'thumbs' (the entry's kto_tag); a 'label' column is present, but the entry reads only its kto_tag"
    )


def test_an_entry_naming_its_conversation_messages_reads_its_own_tags(tmp_path):
    """Every tag of the entry is read, function and observation turns too."""
    call = {"name": "f", "arguments": {"x": 1}}
    turns = [("U", "Call f."), ("F", json.dumps(call)), ("O", "42"), ("A", "It is 42.")]
    rows = [{"messages": chat(*turns, role="speaker", content="text"), "kto_tag": good} for good in (True, False)]
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "U", "assistant_tag": "A", "function_tag": "F", "observation_tag": "O"}
    first, second = entry_examples(tmp_path, {"formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags}, rows)
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "tool"] and first.prompt[1]["tool_calls"][0]["function"] == call
    assert first.completion == ({"role": "assistant", "content": "It is 42."},) and (first.label, second.label) == (True, False)


def test_an_entry_reads_the_conversation_column_it_names_beside_another(tmp_path):
    """A file holding `conversations` and `messages`: the entry naming `conversations` reads it."""
    other = chat(("user", "wrong"), ("assistant", "wrong"))
    rows = [{"conversations": chat(("human", f"q{i}"), ("gpt", "a"), role="from", content="value"), "messages": other, "kto_tag": True} for i in range(2)]
    examples = entry_examples(tmp_path, {"formatting": "sharegpt", "columns": {"messages": "conversations", "kto_tag": "kto_tag"}}, rows)
    assert [e.prompt[-1]["content"] for e in examples] == ["q0", "q1"]
    missing = [{"messages": other, "kto_tag": True}]
    expected = "rows.jsonl: row 1: missing column 'conversations' (the entry's messages)"
    assert entry_error(tmp_path, {"formatting": "sharegpt", "columns": {"messages": "conversations"}}, missing) == expected


# ---- `ranking` decides how every row is read -------------------------------------------------------

SG_PAIR = {
    "conversations": chat(("human", "Q"), role="from", content="value"),
    "chosen": {"from": "gpt", "value": "Y"},
    "rejected": {"from": "gpt", "value": "N"},
}
SG_KTO = {"conversations": chat(("human", "Q"), ("gpt", "A"), role="from", content="value"), "kto_tag": True}


def test_a_ranking_entry_refuses_a_row_that_is_not_a_pair(tmp_path):
    entry = {"formatting": "sharegpt", "ranking": True, "columns": {"messages": "conversations", "chosen": "good", "rejected": "bad"}}
    message = entry_error(tmp_path, entry, [SG_KTO, SG_KTO])
    assert message == "rows.jsonl: row 1: missing column 'good' (the entry's chosen; ranking is true, so every row is a chosen/rejected pair)"


def test_an_entry_without_ranking_refuses_a_pair_without_its_kto_tag(tmp_path):
    """ranking false (or absent): LLaMA-Factory reads a completion and its kto_tag, never
    chosen/rejected; a pair was read as one, guessed from its columns."""
    message = entry_error(tmp_path, {"formatting": "sharegpt"}, [SG_PAIR, SG_PAIR])
    assert message.startswith("rows.jsonl: row 1: missing column 'kto_tag' (the entry's kto_tag); ranking is false, so 'chosen' and 'rejected' are not read")
    assert '"ranking": true' in message


def test_alpaca_entries_read_rows_by_their_ranking(tmp_path):
    kto_row = {"instruction": "Q", "output": "A", "kto_tag": True}
    pair_row = {"instruction": "Q", "chosen": "Y", "rejected": "N"}
    message = entry_error(tmp_path, {"ranking": True}, [kto_row, kto_row])
    assert message == "rows.jsonl: row 1: missing column 'chosen' (the entry's chosen; ranking is true, so every row is a chosen/rejected pair)"
    message = entry_error(tmp_path, {}, [pair_row, pair_row])
    assert message.startswith("rows.jsonl: row 1: missing column 'kto_tag' (the entry's kto_tag); ranking is false, so 'chosen' and 'rejected' are not read")
    labelled = [{**kto_row, "label": False}, {**kto_row, "kto_tag": False, "label": True}]
    assert [e.label for e in entry_examples(tmp_path, {}, labelled)] == [True, False]  # kto_tag, not label


def test_a_map_without_an_entry_keeps_its_fingerprint_names():
    """Only a map read from an entry says so in the fingerprint's names."""
    assert "entry" not in ShareGPTMap().as_dict() and "entry" not in ShareGPTMap(system="sys").as_dict()
    assert ShareGPTMap.from_entry(messages="dialog").as_dict()["entry"] == "unpaired"
    assert ShareGPTMap.from_entry(ranking=True).as_dict()["entry"] == "ranking"


def test_a_file_of_another_shape_beside_an_entry_is_read_by_its_shape(tmp_path):
    """`--dataset e --data feedback.jsonl` (or `--sharegpt-info FILE#e --data ...`): rows with
    none of the entry's columns but a plain shape's own are read by that shape, as before the
    entry's map read every row (it refused them: missing column 'conversations')."""
    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations", "kto_tag": "kto_tag"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"e": {"file_name": "rows.jsonl", **entry}}))
    write_rows(tmp_path / "rows.jsonl", [SG_KTO, {**SG_KTO, "kto_tag": False}])
    plain = write_rows(
        tmp_path / "plain.jsonl", [{"prompt": "P", "completion": "C", "label": True}, {"messages": chat(("user", "q"), ("assistant", "a")), "label": False}]
    )
    found = load_datasets("e", tmp_path)
    examples = read_examples((*found.data, plain), sharegpt=found.sharegpt)
    assert [(e.label, e.completion if isinstance(e.completion, str) else e.completion[0]["content"]) for e in examples] == [
        (True, "A"),
        (False, "A"),
        (True, "C"),
        (False, "a"),
    ]


def test_a_label_column_under_an_entry_reading_kto_tag_is_named(tmp_path):
    """--sharegpt-info used to read `label`; the entry reads its kto_tag alone, as LLaMA-Factory, and says so."""
    rows = [{"conversations": SG_KTO["conversations"], "label": True}] * 2
    message = entry_error(tmp_path, {"formatting": "sharegpt"}, rows)
    assert message.startswith(
        "rows.jsonl: row 1: missing column 'kto_tag' (the entry's kto_tag); a 'label' column is present, but the entry reads only its kto_tag"
    )


def test_a_file_of_another_shape_beside_an_alpaca_entry_is_read_by_its_shape(tmp_path):
    """The alpaca entry's map read every row: `--dataset alpaca_e --data feedback.jsonl` refused
    the TRL rows (missing 'instruction'). Rows with one of its columns are still its own."""
    (tmp_path / "dataset_info.json").write_text(json.dumps({"e": {"file_name": "rows.jsonl", "columns": {"kto_tag": "kto_tag"}}}))
    write_rows(tmp_path / "rows.jsonl", [{"instruction": "Q", "output": "A", "kto_tag": True}, {"instruction": "Q2", "output": "B", "kto_tag": False}])
    plain = write_rows(tmp_path / "plain.jsonl", [{"prompt": "P", "completion": "C", "label": True}])
    found = load_datasets("e", tmp_path)
    examples = read_examples((*found.data, plain), sharegpt=found.sharegpt, alpaca=found.alpaca)
    assert [(e.label, e.completion if isinstance(e.completion, str) else e.completion[0]["content"]) for e in examples] == [
        (True, "A"),
        (False, "B"),
        (True, "C"),
    ]
    write_rows(tmp_path / "rows.jsonl", [{"input": "only", "kto_tag": True}, {"output": "x", "kto_tag": False}])  # the entry's, broken
    with pytest.raises(InputError, match="instruction"):
        read_examples(found.data, sharegpt=found.sharegpt, alpaca=found.alpaca)


def test_a_dataset_info_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "dataset_info.json").write_bytes(b'{"d": {"file_name": "caf\xe9.json"}}')
    with pytest.raises(InputError) as err:
        load_datasets("d", tmp_path)
    assert str(err.value) == f"{tmp_path / 'dataset_info.json'}: not valid UTF-8 at byte 24"
