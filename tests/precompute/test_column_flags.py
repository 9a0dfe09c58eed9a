"""Column flags the user gave: a name that no row of an input holds is refused in one line naming
the flag and the file, before --out is written; a default name absent, or '' (reads none), is
read as before. An empty name of a column a shape needs names its flag."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, text_rows, write_rows

from kto.formats.errors import InputError
from kto.precompute.cli import main
from kto.precompute.inputs.alpaca import AlpacaMap
from kto.precompute.inputs.examples import ColumnMap, ShareGPTMap
from kto.precompute.inputs.records import RowSample, iter_examples, read_examples
from kto.precompute.inputs.sharegpt import load_sharegpt_info

COLUMNS = "(its columns: prompt, completion, label)"


def refusal(paths, columns=ColumnMap(), sharegpt=ShareGPTMap(), alpaca=None) -> str:
    with pytest.raises(InputError) as info:
        read_examples(paths, columns, sharegpt, alpaca)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("flag", ["--system-column", "--id-column", "--tools-column"])
def test_a_given_column_no_row_holds_is_refused_before_out_is_written(tmp_path, tiny_model_dir, flag):
    data = write_rows(tmp_path / "data.jsonl", text_rows())
    out = tmp_path / "O"
    result = CliRunner().invoke(main, [*precompute_args(data, tiny_model_dir, out), flag, "nope"])
    assert result.exit_code == 2, result.output
    assert f"kto-precompute: error: {flag} nope: no row of data.jsonl has that column {COLUMNS}\n" in result.output
    assert not out.exists()


def test_a_given_column_from_the_config_file_is_named_by_its_key(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "data.jsonl", text_rows())
    config = tmp_path / "p.yaml"
    config.write_text("system_column: nope\n")
    args = [*precompute_args(data, tiny_model_dir, tmp_path / "O"), "--config", str(config)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "p.yaml: system_column nope" in result.output and f"no row of data.jsonl has that column {COLUMNS}" in result.output
    assert not (tmp_path / "O").exists()


def test_the_api_refuses_a_given_column_no_row_holds(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", text_rows())
    assert refusal([path], ColumnMap(id="nope")) == f"--id-column nope: no row of d.jsonl has that column {COLUMNS}"
    assert refusal([path], sharegpt=ShareGPTMap(system="nope")) == f"--system-column nope: no row of d.jsonl has that column {COLUMNS}"
    assert refusal([path], sharegpt=ShareGPTMap(tools="nope")) == f"--tools-column nope: no row of d.jsonl has that column {COLUMNS}"


def test_default_names_absent_and_empty_names_read_none(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", chat_rows()[:4])
    assert [e.id for e in read_examples([path])] == [f"d.jsonl:{i}" for i in range(1, 5)]
    examples = read_examples([path], ColumnMap(id=""), ShareGPTMap(system="", tools=""))
    assert [e.id for e in examples] == [f"d.jsonl:{i}" for i in range(1, 5)]
    assert ColumnMap(id="id") == ColumnMap() and read_examples([path], ColumnMap(id="id"), ShareGPTMap(system="system", tools="tools"))


def test_a_column_some_rows_hold_is_read_where_held(tmp_path):
    rows = chat_rows()[:4]
    rows[2] = {**rows[2], "uid": "x", "sys": "Be brief."}
    examples = read_examples([write_rows(tmp_path / "d.jsonl", rows)], ColumnMap(id="uid"), ShareGPTMap(system="sys"))
    assert [e.id for e in examples] == ["d.jsonl:1", "d.jsonl:2", "x", "d.jsonl:4"]
    assert examples[2].prompt[0] == {"role": "system", "content": "Be brief."} and examples[0].prompt[0]["role"] == "user"


def test_a_column_held_only_by_rows_the_sample_leaves_out_is_not_refused(tmp_path):
    """--max-samples: the check reads every row of the input, not only the sampled ones."""
    rows = text_rows()
    rows[-1] = {**rows[-1], "uid": "last"}
    path = write_rows(tmp_path / "d.jsonl", rows)
    examples = list(iter_examples([path], ColumnMap(id="uid"), sample=RowSample(size=2, seed=0)))
    assert len(examples) == 2


def test_inputs_are_checked_together(tmp_path):
    """A dataset with the column beside one without it is a mix users make (a reviewer's
    --data a.jsonl --data b.jsonl --system-column sys was refused for b); a name no row of any
    input holds is the misspelling."""
    a = write_rows(tmp_path / "a.jsonl", [{**r, "uid": f"a{i}"} for i, r in enumerate(text_rows()[:2])])
    b = write_rows(tmp_path / "b.jsonl", text_rows()[2:4])
    assert len(read_examples([a, b], ColumnMap(id="uid"), ShareGPTMap())) == 4
    c = write_rows(tmp_path / "c.jsonl", text_rows()[4:6])
    assert refusal([b, c], ColumnMap(id="uid")) == f"--id-column uid: no row of b.jsonl, c.jsonl has that column {COLUMNS.replace('its', 'their')}"


def test_other_shapes_are_checked_where_they_read_the_column(tmp_path):
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
    sg = write_rows(tmp_path / "sg.jsonl", [{"conversations": turns, "kto_tag": True}, {"conversations": turns, "kto_tag": False}])
    found = "(its columns: conversations, kto_tag)"
    assert refusal([sg], sharegpt=ShareGPTMap(system="nope")) == f"--system-column nope: no row of sg.jsonl has that column {found}"
    entry = load_sharegpt_info({"columns": {"messages": "conversations", "system": "sys"}})
    assert refusal([sg], sharegpt=entry).startswith("--system-column sys (or the entry's columns.system): no row of sg.jsonl has that column")
    alp = write_rows(tmp_path / "al.jsonl", [{"instruction": "Hi", "output": "Yo", "kto_tag": True}, {"instruction": "Hi", "output": "No", "kto_tag": False}])
    message = refusal([alp], ColumnMap(id="nope"), alpaca=AlpacaMap())
    assert message == "--id-column nope: no row of al.jsonl has that column (its columns: instruction, output, kto_tag)"


@pytest.mark.parametrize("flag", ["--prompt-column", "--completion-column", "--label-column", "--messages-column"])
@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_column_name_names_its_flag(tmp_path, flag, name):
    result = CliRunner().invoke(main, ["--data", "d.jsonl", "--model", "m", "--out", str(tmp_path / "O"), flag, name])
    assert result.exit_code == 2
    key = flag.removeprefix("--").removesuffix("-column")
    assert result.output == f"kto-precompute: error: {flag} {name!r}: the {key} must be a non-empty column name\n"
    with pytest.raises(InputError, match=f"^{flag} '': the {key} must be a non-empty column name$"):
        ColumnMap(**{key: ""})


@pytest.mark.parametrize("flag", ["--system-column", "--tools-column"])
def test_a_blank_system_or_tools_column_names_its_flag(tmp_path, flag):
    result = CliRunner().invoke(main, ["--data", "d.jsonl", "--model", "m", "--out", str(tmp_path / "O"), flag, " "])
    assert result.exit_code == 2
    assert result.output == f"kto-precompute: error: {flag} ' ': a column name, or '' to read none\n"
