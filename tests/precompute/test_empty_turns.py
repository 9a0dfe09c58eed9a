"""Empty turns and empty completions, read and tokenized as TRL does.

An empty ShareGPT turn (an empty system turn, say) is read as its `messages` twin is, so one
dataset gives the same ids in either spelling. An empty or whitespace-only completion trains
(an empty reply with a thumbs-down is real KTO signal): a text row's completion is the appended
EOS, a chat row's the template's closing tokens. Where it gives no completion token at all (a
text row under a tokenizer without EOS), the row is dropped and counted, as any row whose
prompt or completion tokenizes to nothing. An empty prompt is still refused.

The literal ids below came from TRL 1.16's `KTOTrainer._prepare_dataset` (add_eos, then
`_tokenize` of the prompt and of prompt+completion, split at their common prefix) run on these
very rows with SmolLM2-135M-Instruct's tokenizer (/work/bench/smollm2), the tokenizer of the
`tokenizer_dir` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kto.formats.errors import InputError
from kto.precompute.inputs.records import read_examples

# SmolLM2's rendering of `<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n`, the end of
# every chat prompt below, and of the default system message its template adds when none is given.
USER_HI = [1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198]
DEFAULT_SYSTEM = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182, 2, 198]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def turn(role, value):
    return {"from": role, "value": value}


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def ids_of(tmp_path: Path, rows: list[dict], tokenizer) -> list[tuple[list[int], list[int]] | None]:
    from kto.precompute.tokenize import tokenize_example

    out = []
    for example in read_examples([write_jsonl(tmp_path / "d.jsonl", rows)]):
        row = tokenize_example(example, tokenizer)
        out.append(None if row is None else (row.prompt_ids.tolist(), row.completion_ids.tolist()))
    return out


def test_an_empty_or_blank_text_completion_is_the_eos_alone_as_in_trl(tmp_path, tokenizer):
    """TRL appends EOS to a text completion ("" + EOS), so the completion is EOS (after "  ")."""
    rows = [{"prompt": "Say nothing:", "completion": "", "label": True}, {"prompt": "Say nothing:", "completion": "  ", "label": False}]
    assert ids_of(tmp_path, rows, tokenizer) == [([36218, 3878, 42], [2]), ([36218, 3878, 42], [256, 2])]


def test_an_empty_or_blank_chat_completion_is_the_closing_tokens_as_in_trl(tmp_path, tokenizer):
    """An empty assistant turn renders as `<|im_end|>\\n` after the generation prompt; a blank one
    " " merges its space with the header's newline (ĊĠ), so the split moves back one token."""
    rows = [
        {"prompt": [user("Hi")], "completion": [assistant("")], "label": False},
        {"prompt": [system("Be brief."), user("Hi")], "completion": [assistant(" ")], "label": False},
        {"messages": [system("Be brief."), user("Hi"), assistant("")], "label": False},
    ]
    brief = [1, 9690, 198, 6077, 5453, 30, 2, 198]
    assert ids_of(tmp_path, rows, tokenizer) == [
        (DEFAULT_SYSTEM + USER_HI, [2, 198]),
        (brief + USER_HI[:-1], [3805, 2, 198]),
        (brief + USER_HI, [2, 198]),
    ]


def test_an_empty_text_completion_without_eos_is_dropped(tmp_path, tokenizer):
    """No EOS to append: the completion has no token, and the row is dropped (and counted) as any
    row whose completion tokenizes to nothing, not refused."""
    from transformers import AutoTokenizer

    no_eos = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    no_eos.eos_token = None
    rows = [{"prompt": "Say nothing:", "completion": "", "label": True}, {"prompt": "Say:", "completion": " hi", "label": False}]
    assert ids_of(tmp_path, rows, no_eos) == [None, ([36218, 42], [15876])]


def test_an_empty_prompt_is_still_refused(tmp_path):
    """Under a tokenizer without BOS (SmolLM2's), TRL's prompt ids for "" are none: the first
    completion token would have no token before it to be scored from."""
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "", "completion": "A", "label": True}, {"prompt": "Q", "completion": "A", "label": False}])
    with pytest.raises(InputError, match=r"^d\.jsonl: row 1: column 'prompt': empty prompt$"):
        read_examples([path])


# Each role's empty turn, in ShareGPT's spelling and in `messages`' (the same rule for both).
SHAREGPT_ROWS = [
    {"conversations": [turn("system", ""), turn("human", "Hi"), turn("gpt", "Hello")], "kto_tag": True},
    {"conversations": [turn("human", "Yo"), turn("gpt", "")], "kto_tag": False},
    {"conversations": [turn("human", ""), turn("gpt", "Hey")], "kto_tag": True},
    {"conversations": [turn("human", "Hi"), turn("gpt", " "), turn("human", "Again?"), turn("gpt", "No.")], "kto_tag": False},
]
MESSAGES_ROWS = [
    {"messages": [system(""), user("Hi"), assistant("Hello")], "label": True},
    {"messages": [user("Yo"), assistant("")], "label": False},
    {"messages": [user(""), assistant("Hey")], "label": True},
    {"messages": [user("Hi"), assistant(" "), user("Again?"), assistant("No.")], "label": False},
]


def test_empty_sharegpt_turns_read_as_their_messages_twin(tmp_path):
    sharegpt = read_examples([write_jsonl(tmp_path / "sg" / "d.jsonl", SHAREGPT_ROWS)])
    messages = read_examples([write_jsonl(tmp_path / "msg" / "d.jsonl", MESSAGES_ROWS)])
    assert [(e.prompt, e.completion, e.label) for e in sharegpt] == [(e.prompt, e.completion, e.label) for e in messages]


def test_an_empty_paired_sharegpt_answer_reads_as_an_empty_assistant_turn(tmp_path):
    row = {"conversations": [turn("human", "Hi")], "chosen": turn("gpt", "Hello"), "rejected": turn("gpt", "")}
    chosen, rejected = read_examples([write_jsonl(tmp_path / "d.jsonl", [row])])
    assert chosen.completion == (assistant("Hello"),) and rejected.completion == (assistant(""),)


def test_a_sharegpt_file_and_its_messages_twin_give_the_same_cache_ids(tmp_path, tiny_model_dir):
    """Byte-identical prompt_ids and completion_ids (both files are named d.jsonl, so the rows'
    ids, and with them the shard order, are the same), and TRL's ids for the empty system turn."""
    import pyarrow as pa
    import pyarrow.ipc as ipc
    from click.testing import CliRunner
    from conftest import precompute_args

    from kto.precompute.cli import main

    columns = {}
    for name, rows in (("sg", SHAREGPT_ROWS), ("msg", MESSAGES_ROWS)):
        data, out = write_jsonl(tmp_path / name / "d.jsonl", rows), tmp_path / name / "cache"
        result = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, out))
        assert result.exit_code == 0, result.output
        tables = [ipc.open_file(pa.memory_map(str(p))).read_all() for p in sorted(out.glob("shard-*.arrow"))]
        table = pa.concat_tables(tables)
        columns[name] = {k: table.column(k) for k in ("id", "prompt_ids", "completion_ids")}
    assert all(columns["sg"][k].equals(columns["msg"][k]) for k in ("id", "prompt_ids", "completion_ids"))
    by_id = dict(zip(columns["sg"]["id"].to_pylist(), zip(columns["sg"]["prompt_ids"].to_pylist(), columns["sg"]["completion_ids"].to_pylist())))
    assert by_id["d.jsonl:1"] == ([1, 9690, 198, 2, 198] + USER_HI, [19556, 2, 198])  # TRL's ids for the empty system turn
    assert by_id["d.jsonl:2"][1] == [2, 198]  # the empty reply: the template's closing tokens


def test_an_empty_alpaca_output_or_history_reply_is_read_as_its_messages_twin(tmp_path):
    """LLaMA-Factory's alpaca converter checks no text for emptiness either: an empty `output`
    (or `chosen`/`rejected`, or a history reply) is the same row as its `messages` spelling."""
    from kto.precompute.inputs.alpaca import AlpacaMap

    alpaca = [
        {"instruction": "Hi", "output": "", "kto_tag": False},
        {"instruction": "Again", "history": [["Hi", ""]], "output": " ", "kto_tag": True},
        {"instruction": "Pick", "chosen": "", "rejected": "No"},
    ]
    messages = [
        {"messages": [user("Hi"), assistant("")], "label": False},
        {"messages": [user("Hi"), assistant(""), user("Again"), assistant(" ")], "label": True},
        {"prompt": [user("Pick")], "chosen": [assistant("")], "rejected": [assistant("No")]},
    ]
    read = read_examples([write_jsonl(tmp_path / "a.jsonl", alpaca)], alpaca=AlpacaMap(history="history"))
    twins = read_examples([write_jsonl(tmp_path / "m.jsonl", messages)])
    assert [(e.prompt, e.completion, e.label) for e in read] == [(e.prompt, e.completion, e.label) for e in twins]
    with pytest.raises(InputError, match=r"a\.jsonl.*column 'output': expected text, got int"):
        read_examples([write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Hi", "output": 3, "kto_tag": True}] * 2)], alpaca=AlpacaMap())


def test_an_empty_alpaca_instruction_is_an_empty_user_turn(tmp_path):
    """LLaMA-Factory joins the non-empty instruction and input with a newline and checks nothing
    more: both empty is an empty user turn, read as the messages twin `user("")`."""
    from kto.precompute.inputs.alpaca import AlpacaMap

    alpaca = [{"instruction": "", "input": "", "output": "x", "kto_tag": False}, {"instruction": "", "input": "In", "output": "y", "kto_tag": True}]
    messages = [{"messages": [user(""), assistant("x")], "label": False}, {"messages": [user("In"), assistant("y")], "label": True}]
    read = read_examples([write_jsonl(tmp_path / "a.jsonl", alpaca)], alpaca=AlpacaMap())
    twins = read_examples([write_jsonl(tmp_path / "m.jsonl", messages)])
    assert [(e.prompt, e.completion, e.label) for e in read] == [(e.prompt, e.completion, e.label) for e in twins]


def test_an_implicit_pair_whose_sides_are_equal_splits_before_the_last_message_as_trl(tmp_path):
    """TRL's extract_prompt finds no differing message and keeps the last one as each side's
    completion; one side being the other's start gives the same split, and its longer side then
    holds a user turn (refused, README "Empty texts, and what is refused on purpose")."""
    same = [user("Hi"), assistant("same")]
    rows = [{"chosen": same, "rejected": same}, {"chosen": [user("Q"), assistant("")], "rejected": [user("Q"), assistant("")]}]
    read = read_examples([write_jsonl(tmp_path / "p.jsonl", rows)])
    assert [(e.prompt, e.completion, e.label) for e in read] == [
        ((user("Hi"),), (assistant("same"),), True),
        ((user("Hi"),), (assistant("same"),), False),
        ((user("Q"),), (assistant(""),), True),
        ((user("Q"),), (assistant(""),), False),
    ]
    longer = [{"chosen": same, "rejected": [*same, user("More"), assistant("b")]}] * 2
    with pytest.raises(InputError, match=r"column 'rejected', message 3: completion has role 'user'"):
        read_examples([write_jsonl(tmp_path / "q.jsonl", longer)])
