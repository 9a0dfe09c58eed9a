"""A record -> its checked `Example`(s): the row, its shapes and its column maps.

The base of precompute/inputs/: `Example` (the one checked row), the label rule, the one
unique-id check, the column maps (`ColumnMap`; `ShareGPTMap`, whose `system` and `tools` columns
every conversational shape honours), and the TRL and LLaMA-Factory shapes. records.py reads the
inputs and sends each record to its shape (here, sharegpt.py or alpaca.py), which import this
module and not each other. Three row shapes here, detected per row by which columns hold a
value (names from `ColumnMap`):

1. TRL unpaired:  {prompt, completion, label}. Both texts, or both message lists (conversational;
   completion messages must be assistant turns).
2. LLaMA-Factory: {messages, label | kto_tag}. The final message must be an assistant turn: it is
   the completion, everything before it the prompt. ShareGPT `{"from", "value"}` messages work too.
3. Paired:        {prompt, chosen, rejected} -> two examples, `<id>:chosen` (desirable) and
   `<id>:rejected` (undesirable), as TRL's unpaired conversion does. Without a prompt column,
   chosen and rejected must be full conversations; their common leading messages are the prompt.
4. ShareGPT (LLaMA-Factory): {conversations, kto_tag | label} or {conversations, chosen, rejected}
   with `{from, value}` turns; see sharegpt.py. A `system` and a `tools` column are honoured by
   every conversational shape.

Files are read by records.py (JSONL, JSON array, CSV, Parquet, Arrow IPC); `--data` may also
name a `datasets` source (hub.py): `hf:ID[:CONFIG]:SPLIT` or a `save_to_disk` directory; its rows
go through the same checks.

Every problem raises `InputError` with one line naming the file and 1-based row (JSONL: the line).
pyarrow, numpy and the standard library only: polars stays out of this import path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from kto.formats.errors import InputError

ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool"}
_FUNCTION_CALL = "function_call"  # ShareGPT's role of an assistant turn whose value is a call
_MESSAGE_KEYS = ("role", "content", "from", "value")  # what _message reads as a turn's role and text
_KTO_TAG = "kto_tag"  # LLaMA-Factory's label column, used when the label column is absent
_ENTRY_READS = ("", "unpaired", "ranking")  # ShareGPTMap.entry: no entry, ranking false, ranking true
# How rows are read (and text tokenized: precompute/tokenize.py `_without_doubled_specials`)
# where the earlier reading differed from LLaMA-Factory's or TRL's; the manifest's
# `content.reading`, so a cache made by the earlier reading has another fingerprint and is
# never reused. It is in every cache: whether a file holds such rows (a function_call turn, a
# bare tool schema) is known only once its rows are parsed, after the fingerprint is taken.
READING_RULE = (
    "LLaMA-Factory shapes: a ShareGPT function_call turn is an assistant turn with tool_calls in every "
    "message column; bare tool schemas are wrapped as {type: function, function: schema}; a system "
    "column equal to the conversation's own system turn is that turn; text already starting with BOS (ending "
    "with EOS) gets no second one from the tokenizer; a tool call's arguments given as JSON text are parsed to "
    "an object in every shape (OpenAI tool_calls too; a template that joins them as text gets the text); other text (not JSON, "
    "no object, a key twice) kept as written"
)


# ---- the checked row ---------------------------------------------------------------------------

Message = dict[str, Any]  # {"role": ..., "content": ..., and the input's other keys (tool_calls, ...)}

_TRUE = {"true", "1", "1.0", "yes", "t", "y", "desirable"}  # 1.0: a float column written as text (pandas to CSV)
_FALSE = {"false", "0", "0.0", "no", "f", "n", "undesirable"}


@dataclass(frozen=True)
class Example:
    """One checked example. Messages are normalised to {"role", "content", ...}: text content
    ("" for a turn that only calls a tool) and the input's other keys, sorted (tool_calls, ...)."""

    id: str  # str of the id column, else f"{file_name}:{row}"; paired rows add ":chosen"/":rejected"
    prompt: str | tuple[Message, ...]  # text, or messages (conversational)
    completion: str | tuple[Message, ...]  # text, or assistant message(s)
    label: bool  # True = desirable
    source: str  # f"{file_name}: row {row}", for error messages downstream
    tools: tuple[dict, ...] = ()  # tool schemas for the chat template (`tools` column)

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)


def parse_label(value: Any, where: str) -> bool:
    """bool, 0/1, or true/false, yes/no, t/f, y/n, 1/0, desirable/undesirable (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):  # 1.0/0.0: a float column (pandas, an int column with a null)
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"{where} {shown(value)} is not boolean-like (expected true/false, 1/0, yes/no)")


def shown(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: every user-facing message stays on one line."""
    text = repr(value)  # repr escapes newlines, keeping the message on one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_unique_ids(keys: np.ndarray, id_at: Callable[[int], str], source_at: Callable[[int], str]) -> None:
    """Every row's id is unique, or InputError `duplicate id 'X': SOURCE and SOURCE`.

    keys[i] stands for row i's id: the id itself (an object array of str), or a 64-bit hash of
    it, which keeps a hundred million ids in 800 MB; equal keys are then confirmed on the ids
    (id_at), since two ids may share a hash. The pair reported is the earliest repeat in row
    order, the one a reader going row by row meets first.
    """
    order = np.argsort(keys, kind="stable")  # stable: equal keys keep their row order
    ordered = keys[order]
    same = ordered[1:] == ordered[:-1]
    starts = np.flatnonzero(~same) + 1  # where a new key begins (after position 0)
    bounds = np.concatenate(([0], starts, [len(order)]))
    repeat = None  # (row of the repeat, row of the first occurrence)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo < 2:
            continue
        seen: dict[str, int] = {}
        for i in sorted(int(k) for k in order[lo:hi]):
            first = seen.setdefault(id_at(i), i)
            if first != i:
                repeat = min(repeat or (i, first), (i, first))
                break
    if repeat is not None:
        i, first = repeat
        a, b = source_at(first), source_at(i)
        raise InputError(f"duplicate id {id_at(i)!r}: {a} and {b}{_repeat_hint(a, b)}")


def _repeat_hint(a: str, b: str) -> str:
    # Ids default to file name + row, so two files with one name collide at one source. Other
    # rows sharing an id got it from the id column: a prompt id over sampled answers is common
    # in KTO data, and TRL never reads `id`, so say how to stop reading it.
    if a == b:
        return " (two input files share this name, or one file is given twice)"
    return "; ids come from the id column: --id-column '' reads none and names each row FILE:ROW"


def kind_name(value: Any) -> str:
    names = {str: "text", list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def one_line(error: Any) -> str:
    return " ".join(str(error).split())


# ---- column maps -------------------------------------------------------------------------------


def require_names(column_map: Any, what: str, optional: Sequence[str] = ()) -> None:
    """Every field of a column-map dataclass is a non-empty column name; those in `optional` may
    be "" (no such column: nothing is read)."""
    for key, name in asdict(column_map).items():
        if key in optional and name == "":
            continue
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{what}: {key} must be a non-empty name, got {name!r}")


@dataclass(frozen=True)
class ShareGPTMap:
    """Column and role names, with LLaMA-Factory's defaults and its `dataset_info.json` keys."""

    messages: str = "conversations"
    # Honoured by every conversational shape, not only ShareGPT; "" reads no such column (a
    # dataset_info.json entry that does not map one, as LLaMA-Factory reads it; --system-column '').
    system: str = "system"
    tools: str = "tools"
    chosen: str = "chosen"
    rejected: str = "rejected"
    kto_tag: str = "kto_tag"
    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"
    entry: str = ""
    """Set for the map of a dataset_info.json entry (--dataset, --sharegpt-info): every row is
    read by this map, whatever its conversation column is named, and as the entry's `ranking`
    says: "unpaired" (false: a completion labelled by `kto_tag` alone) or "ranking" (true: a
    chosen/rejected pair). "": no entry; each row's columns tell its shape."""

    def __post_init__(self) -> None:
        require_names(self, "sharegpt map", optional=("system", "tools", "entry"))
        if self.entry not in _ENTRY_READS:
            raise InputError(f"sharegpt map: entry must be one of {', '.join(map(repr, _ENTRY_READS))}, got {self.entry!r}")

    @classmethod
    def from_entry(cls, ranking: bool = False, **names: str) -> ShareGPTMap:
        """The map of a dataset_info.json entry: LLaMA-Factory reads a system or tools column only
        when the entry names it (its defaults are None), so a `system` column the entry does not
        name is not a system prompt."""
        return cls(**{"system": "", "tools": "", **names, "entry": "ranking" if ranking else "unpaired"})

    @property
    def ranking(self) -> bool:
        """An entry's `ranking: true`: every row is a chosen/rejected pair."""
        return self.entry == "ranking"

    def as_dict(self) -> dict[str, str]:
        """The names, for the fingerprint (`content.sharegpt`); `entry` only when set, so a map
        without an entry keeps the fingerprint it had before `entry` was read."""
        return {k: v for k, v in asdict(self).items() if k != "entry" or v}

    def is_default(self) -> bool:
        return self == ShareGPTMap()


@dataclass(frozen=True)
class ColumnMap:
    """Which input columns hold what. Defaults follow TRL / LLaMA-Factory names."""

    prompt: str = "prompt"
    completion: str = "completion"
    label: str = "label"  # `kto_tag` is accepted when this column is absent
    messages: str = "messages"  # LLaMA-Factory shape
    chosen: str = "chosen"  # paired preference shape
    rejected: str = "rejected"
    id: str = "id"

    def __post_init__(self) -> None:
        for key, name in asdict(self).items():
            if key == "id" and name == "":
                continue  # --id-column '': no id column, every row is named FILE:ROW
            if not isinstance(name, str) or not name.strip():
                # Named by its flag (the Python API's field is the flag's name): --config maps it to the file's key.
                raise InputError(f"--{key}-column {name!r}: the {key} must be a non-empty column name")

    def as_dict(self) -> dict[str, str]:
        """Plain dict, for fingerprinting: the manifest's `content.columns`. The first fields are
        always in it; a field added later only when set to another name than its default, so a
        new field leaves every existing cache's fingerprint as it was."""
        defaults = {f.name: f.default for f in fields(self)}
        return {k: v for k, v in asdict(self).items() if k in _FINGERPRINTED_ALWAYS or v != defaults[k]}


# ColumnMap's fields when caches first recorded the mapping: always part of the fingerprint.
_FINGERPRINTED_ALWAYS = frozenset({"prompt", "completion", "label", "messages", "chosen", "rejected", "id"})


# ---- record -> Example(s) --------------------------------------------------------------------


def check_one_shape(present: set, columns: ColumnMap, conversations: str, source: str) -> None:
    """A row filling the columns of two shapes is refused: whichever one won, the other's texts
    would be dropped without a word (TRL refuses such a row too: apply_chat_template's key sets)."""
    trl = columns.prompt in present and columns.completion in present
    # A `messages` row is a shape only with its label: beside a pair without one (an SFT
    # conversation in ultrafeedback_binarized's rows, say) it cannot be the one meant.
    messages = columns.messages in present and _labelled(present, columns)
    sharegpt = conversations in present and conversations != columns.messages
    # chosen + rejected answer a ShareGPT conversation (its own paired shape), never a TRL pair
    # or an LLaMA-Factory `messages` column other than the ShareGPT map's.
    pair_clash = columns.chosen in present and columns.rejected in present and (trl or (messages and conversations != columns.messages))
    if trl + messages + sharegpt < 2 and not pair_clash:
        return  # the fast path every good row takes (a 100k-row file reads as fast as before)
    shapes = {  # shape -> (its columns, the flags naming them)
        "TRL unpaired": ((columns.prompt, columns.completion), "--prompt-column/--completion-column"),
        "LLaMA-Factory": ((columns.messages,), "--messages-column"),
        "ShareGPT": ((conversations,), "--sharegpt-info"),
        "paired": ((columns.chosen, columns.rejected), "--chosen-column/--rejected-column"),
    }
    if conversations == columns.messages:
        del shapes["ShareGPT"]
    found = [name for name, (keys, _) in shapes.items() if all(k in present for k in keys)]
    if not pair_clash and "paired" in found:
        found.remove("paired")
    if len(found) < 2:
        return
    a, b = ("+".join(f"'{k}'" for k in shapes[name][0]) + f" ({name})" for name in found[:2])
    raise InputError(
        f"{source}: the row holds two shapes, {a} and {b}, and either could be the one meant; "
        f"drop one from the file (or point {shapes[found[1]][1]} at a column the file does not have)"
    )


def _labelled(present: set, columns: ColumnMap) -> bool:
    """The row fills a label column: its own, or LLaMA-Factory's kto_tag."""
    return columns.label in present or _KTO_TAG in present


def missing_label(record: dict, keys: Sequence[str], source: str, rest: str) -> InputError:
    """The error for a row whose label columns `keys` hold no label: a null cell is named as
    null, not as a missing column (the column is there)."""
    nulls = [key for key in dict.fromkeys(keys) if key in record]  # label_of found them all null
    if nulls:
        return InputError(f"{source}: '{nulls[0]}' is null in this row; expected a label (true or false)")
    names = list(dict.fromkeys(keys))
    also = f" (or '{names[1]}')" if len(names) > 1 else ""
    return InputError(f"{source}: missing column '{names[0]}'{also}{rest}")


def entry_column(record: dict, key: str, name: str, source: str, why: str = "") -> Any:
    """The cell of a column a dataset_info.json entry maps (its key `name`: messages, chosen, ...);
    a row that does not fill it is refused by the entry's own names."""
    if is_present(record, key):
        return record[key]
    found = f"'{key}' is null in this row" if key in record else f"missing column '{key}'"
    raise InputError(f"{source}: {found} (the entry's {name}{why})")


def entry_label(record: dict, kto_tag: str, pair: tuple[str, str], source: str) -> bool:
    """The label of a row read through an entry whose ranking is false: its kto_tag column
    alone, as LLaMA-Factory reads it (a `label` column beside it is not read), and never a pair."""
    label = label_of(record, (kto_tag,), source)
    if label is not None:
        return label
    rest = " (the entry's kto_tag)"
    if any(is_present(record, key) for key in pair):
        rest += f"; ranking is false, so '{pair[0]}' and '{pair[1]}' are not read (\"ranking\": true in the entry reads every row as their pair)"
    elif kto_tag != "label" and is_present(record, "label"):
        rest += '; a \'label\' column is present, but the entry reads only its kto_tag (map "kto_tag": "label" in its columns to read it)'
    raise missing_label(record, (kto_tag,), source, rest)


RANKING_ROWS = "; ranking is true, so every row is a chosen/rejected pair"


def shaped_examples(record: dict, columns: ColumnMap, base_id: str, source: str, present: set) -> list[Example]:
    # `messages` beside a pair and no label is the pair's conversation, not a KTO row (check_one_shape).
    pair_only = columns.chosen in present and columns.rejected in present and not _labelled(present, columns)
    if columns.messages in present and not pair_only:
        where = f"{source}: column '{columns.messages}'"
        prompt, completion = _split_conversation(record[columns.messages], where)
    elif {columns.chosen, columns.rejected} & present:
        return _paired(record, columns, base_id, source)
    elif {columns.prompt, columns.completion} & present:
        _require(record, (columns.prompt, columns.completion), columns, source)
        prompt, completion = _prompt_and_completion(record, columns.prompt, columns.completion, source)
    else:
        found = ", ".join(sorted(map(str, present))) or "none"
        near = [f"{c!r} for '{key}'" for key in (columns.prompt, columns.completion, columns.messages, columns.chosen) for c in present if _near(c, key)]
        exact = f"; column names are read exactly, spaces and case included ({', '.join(near)}?)" if near else ""
        raise InputError(f"{source}: no known columns (found: {found}){exact}; {_shapes(columns)}")
    return [Example(base_id, prompt, completion, _label(record, columns, source), source)]


def _shapes(c: ColumnMap) -> str:
    return (
        f"expected {c.prompt}+{c.completion}+{c.label} (TRL unpaired), {c.messages}+{c.label} "
        f"(LLaMA-Factory), {c.prompt}+{c.chosen}+{c.rejected} (paired) or conversations+kto_tag (ShareGPT); "
        "alpaca files (instruction/input/output) are read through --dataset NAME --dataset-dir DIR (dataset_info.json); "
        "other names: --prompt-column NAME --completion-column NAME --label-column NAME (OpenRLHF's input/output/label: "
        "--prompt-column input --completion-column output)"
    )


def is_present(record: dict, key: str) -> bool:
    # A null cell counts as absent: Parquet/Arrow rows carry every column of the file, so a file
    # mixing shapes has nulls in the columns a row does not use.
    return record.get(key) is not None


def _require(record: dict, keys: Sequence[str], columns: ColumnMap, source: str) -> None:
    for key in keys:
        if key in record and record[key] is None:
            # A Parquet/Arrow file has the column; this row's cell is empty (not a missing column).
            raise InputError(f"{source}: '{key}' is null in this row; {_shapes(columns)}")
        if not is_present(record, key):
            raise InputError(f"{source}: missing column '{key}'{_spelt_otherwise(record, key)}; {_shapes(columns)}")


def _near(column: object, key: str) -> bool:
    """`column` is `key` but for spaces around it or case (a spreadsheet's `Prompt`, a CSV
    header's ' completion')."""
    return isinstance(column, str) and column != key and column.strip().lower() == key.lower()


def _spelt_otherwise(record: dict, key: str) -> str:
    """A column named `key` but for spaces or case (a CSV header `prompt, completion, label`
    reads as ' completion'), said, since the user sees `key` in their own header."""
    near = [c for c in record if _near(c, key)]
    return f" (the file has {near[0]!r}: column names are read exactly, spaces and case included)" if near else ""


def base_id_of(record: dict, id_column: str, fallback: str, source: str) -> str:
    # id_column "" reads no column, even one named "" (a CSV header with an empty name).
    value = record.get(id_column) if id_column else None
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        # Python's text of an object or a list would be stored as the id, silently.
        raise InputError(f"{source}: column '{id_column}': expected text or a number as the id, got {kind_name(value)}")
    if not str(value).strip():
        raise InputError(f"{source}: column '{id_column}': empty id")
    return _unicode(str(value), f"{source}: column '{id_column}'")


def _label(record: dict, columns: ColumnMap, source: str) -> bool:
    label = label_of(record, (columns.label, _KTO_TAG), source)
    if label is None:
        raise missing_label(record, (columns.label, _KTO_TAG), source, f"; {_shapes(columns)}")
    return label


def label_of(record: dict, keys: Sequence[str], source: str) -> bool | None:
    """The row's label from the first of the label columns `keys` it fills (a null cell fills
    none); None when it fills none. Another of them holding a label that disagrees (a TRL
    `label` beside a LLaMA-Factory `kto_tag`, say, in a merged export) is refused: either could
    be the one meant. One holding no label at all (a `label` of topics) is not read, as before."""
    present = [key for key in dict.fromkeys(keys) if record.get(key) is not None]
    if not present:
        return None
    label = parse_label(record[present[0]], f"{source}: {present[0]}")
    for key in present[1:]:
        try:
            other = parse_label(record[key], f"{source}: {key}")
        except InputError:
            continue
        if other != label:
            raise InputError(f"{source}: '{present[0]}' says {label} and '{key}' says {other}; keep one label column (--label-column names the one to read)")
    return label


def _paired(record: dict, columns: ColumnMap, base_id: str, source: str) -> list[Example]:
    _require(record, (columns.chosen, columns.rejected), columns, source)
    if is_present(record, columns.prompt):
        prompt, chosen = _prompt_and_completion(record, columns.prompt, columns.chosen, source)
        _, rejected = _prompt_and_completion(record, columns.prompt, columns.rejected, source)
    else:
        prompt, chosen, rejected = _implicit_prompt(record, columns, source)
    return [Example(f"{base_id}:chosen", prompt, chosen, True, source), Example(f"{base_id}:rejected", prompt, rejected, False, source)]


def _implicit_prompt(record: dict, columns: ColumnMap, source: str) -> tuple[tuple[Message, ...], ...]:
    """Return (prompt, chosen completion, rejected completion), all message tuples."""
    # TRL's implicit-prompt pairs: the messages chosen and rejected share up front are the prompt.
    where_c, where_r = (f"{source}: column '{k}'" for k in (columns.chosen, columns.rejected))
    for key in (columns.chosen, columns.rejected):
        if not isinstance(record[key], list):
            raise InputError(
                f"{source}: missing column '{columns.prompt}'; without it, '{key}' must be "
                f"a full conversation (a list of messages), got {kind_name(record[key])}"
            )
    chosen = _messages(record[columns.chosen], where_c)
    rejected = _messages(record[columns.rejected], where_r)
    n, shortest = 0, min(len(chosen), len(rejected))
    while n < shortest and chosen[n] == rejected[n]:
        n += 1
    if n == shortest:  # one is the other's start (identical, say): TRL's split keeps its last message
        n = shortest - 1
    if n <= 0:
        raise InputError(
            f"{source}: '{columns.chosen}' and '{columns.rejected}' share no leading messages, so there is no prompt (add a '{columns.prompt}' column)"
        )
    chosen_turns = _assistant_turns(chosen[n:], where_c, start=n + 1)
    return chosen[:n], chosen_turns, _assistant_turns(rejected[n:], where_r, start=n + 1)


def _prompt_and_completion(record: dict, p_key: str, c_key: str, source: str) -> tuple[Any, Any]:
    """Both text, or both message lists; anything else (including a mix) is an error."""
    p_where, c_where = f"{source}: column '{p_key}'", f"{source}: column '{c_key}'"
    prompt, completion = record[p_key], record[c_key]
    for value, where in ((prompt, p_where), (completion, c_where)):
        if not isinstance(value, (str, list)):
            raise InputError(f"{where}: content is not text or a list of messages (got {kind_name(value)})")
    if isinstance(prompt, str) != isinstance(completion, str):
        raise InputError(f"{source}: '{p_key}' is {kind_name(prompt)} but '{c_key}' is {kind_name(completion)}; both must be text or both lists of messages")
    if isinstance(prompt, str):
        # An empty completion trains as TRL trains it, as the EOS appended to it (text_ids); an
        # empty prompt does not: under a tokenizer without BOS it has no token to score the first
        # completion token from.
        return _nonempty(prompt, p_where, "prompt"), _unicode(completion, c_where)
    prompt_messages = _messages(prompt, p_where)
    if not prompt_messages:
        raise InputError(f"{p_where}: empty prompt (no messages)")
    return prompt_messages, _assistant_turns(_messages(completion, c_where), c_where)


def _split_conversation(value: Any, where: str) -> tuple[tuple[Message, ...], tuple[Message, ...]]:
    """LLaMA-Factory: the final message is the assistant completion, the rest the prompt."""
    if not isinstance(value, list):
        raise InputError(f"{where}: expected a list of messages, got {kind_name(value)}")
    messages = _messages(value, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise InputError(f"{where}: conversation has no assistant turn")
    if messages[-1]["role"] != "assistant":
        raise InputError(f"{where}: last message is {messages[-1]['role']!r}; the conversation must end with the assistant turn to learn from")
    if len(messages) == 1:
        raise InputError(f"{where}: empty prompt (no messages before the assistant turn)")
    return messages[:-1], _assistant_turns(messages[-1:], where, len(messages))


def _assistant_turns(messages: tuple[Message, ...], where: str, start: int = 1) -> tuple[Message, ...]:
    """A completion: one or more assistant messages. Their text may be empty or blank, as TRL
    reads it: an empty reply (with a thumbs-down, say) is still learnt from, as the template's
    closing tokens (`<|im_end|>\n`); a template that renders it as nothing leaves the row no
    completion token, and tokenization drops it (counted).

    `start` is the 1-based position of the first of them in the column, for error messages.
    """
    if not messages:
        raise InputError(f"{where}: empty completion (no assistant message)")
    for i, m in enumerate(messages, start):
        if m["role"] != "assistant":
            role = m["role"]
            raise InputError(f"{where}, message {i}: completion has role {role!r}, expected 'assistant'")
    return messages


def _messages(value: list, where: str) -> tuple[Message, ...]:
    return tuple(_message(raw, f"{where}, message {i}") for i, raw in enumerate(value, 1))


def _message(raw: Any, where: str) -> Message:
    """Normalise {role, content} or ShareGPT {from, value} to {"role", "content", ...}: the
    message's other keys (`tool_calls`, `reasoning_content`, `tool_call_id`, ...) stay, for the
    chat template to render as it would for TRL, which hands messages to it unchanged; keeping
    only role and content rendered a call as an empty assistant turn and dropped reasoning."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a message object with role and content, got {kind_name(raw)}")
    if raw.get("role") is not None:
        role, content = raw["role"], raw.get("content")
    elif raw.get("from") is not None:
        role, content = raw["from"], raw.get("value")
        if role == _FUNCTION_CALL:  # as sharegpt.py reads it: its value is the call, not text
            return {"role": "assistant", "content": "", "tool_calls": tool_calls_of(_text(content, where), where)}
        role = _SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role
    else:
        raise InputError(f"{where}: message has no 'role' (or ShareGPT 'from')")
    if role not in ROLES:
        raise InputError(f"{where}: unknown role {shown(role)} (expected {', '.join(ROLES)})")
    # Absent fields of an Arrow/Parquet message struct read as None: not keys of this message.
    # Sorted: the pairing keys hash a message's repr, which must not depend on the input's order.
    others = {k: raw[k] for k in sorted(raw) if k not in _MESSAGE_KEYS and raw[k] is not None}
    if isinstance(others.get("tool_calls"), list):
        others["tool_calls"] = [_with_parsed_arguments(call) for call in others["tool_calls"]]
    if content is None and others.get("tool_calls"):
        content = ""  # OpenAI's shape: a turn that only calls a tool has content null
    return {"role": role, "content": _text(content, where), **others}


def _text(content: Any, where: str) -> str:
    """Message content as text; OpenAI-style [{"type": "text", "text": ...}] parts are joined."""
    if isinstance(content, str):
        return _unicode(content, where)
    if not isinstance(content, list):
        raise InputError(f"{where}: content is not text (got {kind_name(content)})")
    texts = []
    for i, part in enumerate(content, 1):
        is_dict = isinstance(part, dict)
        if not (is_dict and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = shown(part.get("type")) if is_dict else kind_name(part)
            raise InputError(f"{where}: content part {i} is {kind}, not text")
        texts.append(part["text"])
    return _unicode("".join(texts), where)


def _nonempty(text: str, where: str, what: str) -> str:
    if not text.strip():
        raise InputError(f"{where}: empty {what}")
    return _unicode(text, where)


def _unicode(text: str, where: str) -> str:
    """Refuse a lone surrogate (JSON's "\\ud800" parses to one): no tokenizer or Arrow column can
    encode it, and it would fail far from its row."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{where}: a lone surrogate {text[e.start]!r} at character {e.start + 1} is not Unicode text (is the JSON's \\u escape cut in half?)"
        ) from None
    return text


# ---- columns every conversational shape honours (system, tools) ----------------------------------


def with_system(prompt: Any, record: dict, smap: ShareGPTMap, source: str) -> Any:
    """Prepend the row's `system` cell as a system message (an empty or null cell adds nothing)."""
    system = record.get(smap.system) if smap.system else None
    if system is None or system == "":
        return prompt
    where = f"{source}: column '{smap.system}'"
    if not isinstance(system, str):
        raise InputError(f"{where}: expected text, got {kind_name(system)}")
    if isinstance(prompt, str):
        raise InputError(
            f"{where}: a system prompt needs a conversational prompt (a list of messages); text prompts are tokenized as they are (--system-column '' reads no system column)"
        )
    if prompt and prompt[0]["role"] == "system":
        # LLaMA-Factory's converter takes the conversation's own system turn and never reads the
        # column then. A column saying the same is that turn; one saying something else is a
        # conflict the converter would hide (either could be the one meant), so it is refused.
        if prompt[0]["content"].strip() == system.strip() or not system.strip():  # equal, or blank
            return prompt
        turn = shown(prompt[0]["content"], 40)
        raise InputError(f"{where}: {shown(system, 40)} differs from the conversation's own system message {turn}; keep one (or make them equal)")
    return ({"role": "system", "content": system},) + tuple(prompt)


def tools_of(record: dict, smap: ShareGPTMap, source: str) -> tuple[dict, ...]:
    """The row's tool schemas: a list of objects, or a JSON text of one; null or empty: none."""
    cell = record.get(smap.tools) if smap.tools else None
    where = f"{source}: column '{smap.tools}'"
    if cell is None or cell == "":
        return ()
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: text that is not JSON ({e.msg} at column {e.colno}); expected a list of tool schemas") from None
    if not isinstance(cell, list):
        raise InputError(f"{where}: expected a list of tool schemas, got {kind_name(cell)}")
    return tuple(_openai_tool(tool, f"{where}, tool {i}") for i, tool in enumerate(cell, 1))


def _openai_tool(tool: Any, where: str) -> dict:
    """One tool as chat templates read it, `{"type": "function", "function": {"name", ...}}`.

    LLaMA-Factory's `tools` column holds bare schemas `{"name", "description", "parameters"}`;
    its tool formatter and Hugging Face chat templates read `tool.function.name`, so a bare
    schema passed as it is rendered without its name (or not at all). Bare ones are wrapped,
    wrapped ones kept; anything else is refused rather than rendered as an empty tool."""
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        schema, wrapped = tool["function"], True
    elif isinstance(tool, dict) and "type" not in tool and "function" not in tool:
        schema, wrapped = tool, False
    else:
        schema, wrapped = None, False
    name = schema.get("name") if schema is not None else None
    if not (isinstance(name, str) and name.strip()) or not isinstance(schema.get("parameters", {}), dict):
        raise InputError(
            f'{where}: expected a tool schema {{"name", "description", "parameters"}} or {{"type": "function", "function": {{...}}}} '
            f"with a name and an object of parameters, got {shown(tool)}"
        )
    return tool if wrapped else {"type": "function", "function": tool}


def tool_calls_of(value: str, where: str) -> list[dict]:
    """A ShareGPT function_call turn's value, the JSON `{"name", "arguments"}` or a list of them,
    as an assistant turn's `tool_calls` (OpenAI's shape, which chat templates render)."""
    try:
        calls = json.loads(value)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: function call is not JSON ({e.msg} at column {e.colno})") from None
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and "arguments" in call):
            raise InputError(f'{where}: a function call must be {{"name": ..., "arguments": ...}}, got {shown(call)}')
        out.append({"type": "function", "function": {"name": call["name"], "arguments": _call_arguments(call["arguments"])}})
    return out


class ParsedArguments(dict):
    """A tool call's arguments object parsed from JSON text, which it keeps (`text`) for a
    template that joins arguments as text (DeepSeek-R1's `'\\n' + arguments`): tokenize.render
    gives it the text when the object fails to render there."""

    text: str

    def __repr__(self) -> str:
        # The pairing and duplicate keys hash a message's repr: two spellings of one object render
        # to different ids under a template that takes the text, so the text is part of it.
        return f"ParsedArguments({dict.__repr__(self)}, text={self.text!r})"


def _call_arguments(arguments: Any) -> Any:
    """A tool call's arguments as chat templates read them: JSON text of an object (OpenAI's
    wire shape) parsed to it, anything else as it is. Parsed in every shape, so that a call renders to
    the same ids whether a ShareGPT function_call or an OpenAI `tool_calls` message carries it:
    transformers' templates expect an object (most write it `| tojson`, which turned the text
    into a quoted string), and LLaMA-Factory's data holds one. Here the reading differs from TRL,
    which hands OpenAI rows' text to the template as it is (its ids hold the quoted string), and
    from LLaMA-Factory, whose formatter `json.dumps` the text again. Text that is not JSON is
    kept as it is: a malformed call is what an undesirable label may judge."""
    if not isinstance(arguments, str):
        return arguments
    try:
        value = json.loads(arguments, object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, RepeatedKey):
        return arguments  # not JSON, or a key named twice (parsing keeps one): as written
    if not isinstance(value, dict):
        return arguments  # a list, a string, null: no arguments object; the text, as written
    parsed = ParsedArguments(value)
    parsed.text = arguments
    return parsed


class RepeatedKey(ValueError):
    """A JSON object named `key` twice (unique_keys)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json's object_pairs_hook: an object naming one key twice (`{"label": true, "label": false}`)
    is refused (RepeatedKey); json.loads would keep the last silently, and either could be the
    one meant. Measured: within the noise of json.loads on 100k JSONL rows (the dict is built in C)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise RepeatedKey(key)
    return obj


def _with_parsed_arguments(call: Any) -> Any:
    """An OpenAI `tool_calls` entry with its `function.arguments` read by `_call_arguments` (a
    copy: the input's record is not changed); an entry of another shape as it is, for the chat
    template to render or refuse."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    return {**call, "function": {**function, "arguments": _call_arguments(function["arguments"])}}
