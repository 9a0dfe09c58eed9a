"""Input readers: user data files -> a checked list of `Example`s.

Files are read by records.py (JSONL, JSON array, CSV, Parquet, Arrow IPC). Three row shapes, detected per row by
which columns hold a value (names from `ColumnMap`):

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

`--data` may also name a `datasets` source (hub.py): `hf:ID[:CONFIG]:SPLIT` or a
`save_to_disk` directory; its rows go through the same checks.

Every problem raises `InputError` with one line naming the file and 1-based row (JSONL: the line).
pyarrow, numpy and the standard library only: polars stays out of this import path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from kto.formats.errors import InputError

from .alpaca import AlpacaMap, alpaca_examples
from .example import Example, Message, check_unique_ids, parse_label, shown
from .records import SUFFIXES, file_sha256, kind_name, one_line, read_file, records  # noqa: F401  (re-exported)
from .sharegpt import ShareGPTMap, sharegpt_examples, tools_of, with_system

ROLES = ("system", "user", "assistant", "tool")
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool", "function_call": "assistant"}
_KTO_TAG = "kto_tag"  # LLaMA-Factory's label column, used when the label column is absent


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
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"column map: {key} must be a non-empty column name, got {name!r}")

    def as_dict(self) -> dict[str, str]:
        """Plain dict, for fingerprinting: the manifest's `content.columns`. The first fields are
        always in it; a field added later only when set to another name than its default, so a
        new field leaves every existing cache's fingerprint as it was."""
        defaults = {f.name: f.default for f in fields(self)}
        return {k: v for k, v in asdict(self).items() if k in _FINGERPRINTED_ALWAYS or v != defaults[k]}


# ColumnMap's fields when caches first recorded the mapping: always part of the fingerprint.
_FINGERPRINTED_ALWAYS = frozenset({"prompt", "completion", "label", "messages", "chosen", "rejected", "id"})


def read_examples(
    paths: Sequence[str | Path], columns: ColumnMap = ColumnMap(), sharegpt: ShareGPTMap = ShareGPTMap(), alpaca: AlpacaMap | None = None
) -> list[Example]:
    """Read every file (order kept: files in the given order, rows in file order), check every row."""
    return read_inputs(paths, columns, sharegpt, alpaca)[0]


def read_inputs(
    paths: Sequence[str | Path], columns: ColumnMap = ColumnMap(), sharegpt: ShareGPTMap = ShareGPTMap(), alpaca: AlpacaMap | None = None
) -> tuple[list[Example], list[dict]]:
    """`read_examples`, plus each file's `{"name", "sha256"}` of exactly the bytes its rows came from."""
    # A lone path would otherwise be iterated per character.
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    inputs: list[dict] = []
    examples = list(iter_examples(paths, columns, sharegpt, inputs, alpaca))
    check_unique_ids(np.array([ex.id for ex in examples], dtype=object), lambda i: examples[i].id, lambda i: examples[i].source)
    if len(examples) < 2:
        files = ", ".join(str(p) for p in paths) or "no input files"
        raise InputError(f"need at least 2 examples, got {len(examples)} (from {files})")
    return examples, inputs


def iter_examples(
    paths: Sequence[str | Path],
    columns: ColumnMap = ColumnMap(),
    sharegpt: ShareGPTMap = ShareGPTMap(),
    inputs: list[dict] | None = None,
    alpaca: AlpacaMap | None = None,
    sample: RowSample | None = None,
) -> Iterator[Example]:
    """Every row's examples, one input after another, without holding them: ids are not checked
    for uniqueness here (read_examples does; precompute checks its staged ids). `inputs`, when
    given, receives each input's identity (hub.input_records): for a file, the sha256 of exactly
    the bytes its rows were parsed from. `sample`: only a seeded sample of each input's rows."""
    from .hub import input_records

    for index, path in enumerate(paths):
        name, identity, rows = input_records(path)
        if sample is not None:
            rows = sample.rows(rows, index)
        for row, record in rows:
            yield from _row_examples(record, name, row, columns, sharegpt, alpaca)
        if inputs is not None:
            inputs.append(identity)


@dataclass(frozen=True)
class RowSample:
    """--max-samples N: at most N rows of each input (as LLaMA-Factory's max_samples applies to
    each dataset), drawn uniformly with the seed, kept in file order. A row is a row of the
    file: a paired row stays one row here and becomes its two examples afterwards."""

    size: int
    seed: int

    def rows(self, rows: Iterator[tuple[int, Any]], input_index: int) -> list[tuple[int, Any]]:
        """Reservoir sampling (Algorithm R) over one pass: holds N rows, never the whole input,
        and reads every row, so the input's sha256 still covers all of its bytes. Which rows
        are kept depends on (seed, input's place in --data, N) and the rows' order only."""
        rng = np.random.default_rng([self.seed, input_index])
        kept: list[tuple[int, Any]] = []
        for seen, item in enumerate(rows):
            if seen < self.size:
                kept.append(item)
            else:
                slot = int(rng.integers(0, seen + 1))
                if slot < self.size:
                    kept[slot] = item
        return sorted(kept, key=lambda item: item[0])


# ---- record -> Example(s) --------------------------------------------------------------------


def _row_examples(
    record: Any, file_name: str, row: int, columns: ColumnMap, sharegpt: ShareGPTMap = ShareGPTMap(), alpaca: AlpacaMap | None = None
) -> list[Example]:
    """Detect the row's shape and build its one (or, for paired rows, two) examples; with an
    `alpaca` map (a --dataset entry of that formatting) every row is read as alpaca."""
    source = f"{file_name}: row {row}"
    if not isinstance(record, dict):
        raise InputError(f"{source}: expected an object of named columns, got {kind_name(record)}")
    base_id = _base_id(record, columns.id, f"{file_name}:{row}", source)
    if alpaca is not None:
        return alpaca_examples(record, alpaca, sharegpt, columns.label, base_id, source)
    present = {key for key in record if _present(record, key)}
    if sharegpt.messages in present and columns.messages not in present:
        return sharegpt_examples(record, sharegpt, columns.label, base_id, source)
    examples = _shaped_examples(record, columns, base_id, source, present)
    tools = tools_of(record, sharegpt, source)
    if tools and not examples[0].conversational:
        raise InputError(f"{source}: column '{sharegpt.tools}': tools need a conversational prompt (a list of messages)")
    if not (tools or _present(record, sharegpt.system)):
        return examples
    prompt = with_system(examples[0].prompt, record, sharegpt, source)
    return [Example(e.id, prompt, e.completion, e.label, e.source, tools) for e in examples]


def _shaped_examples(record: dict, columns: ColumnMap, base_id: str, source: str, present: set) -> list[Example]:
    if columns.messages in present:
        where = f"{source}: column '{columns.messages}'"
        prompt, completion = _split_conversation(record[columns.messages], where)
    elif {columns.chosen, columns.rejected} & present:
        return _paired(record, columns, base_id, source)
    elif {columns.prompt, columns.completion} & present:
        _require(record, (columns.prompt, columns.completion), columns, source)
        prompt, completion = _prompt_and_completion(record, columns.prompt, columns.completion, source)
    else:
        found = ", ".join(sorted(map(str, present))) or "none"
        raise InputError(f"{source}: no known columns (found: {found}); {_shapes(columns)}")
    return [Example(base_id, prompt, completion, _label(record, columns, source), source)]


def _shapes(c: ColumnMap) -> str:
    return (
        f"expected {c.prompt}+{c.completion}+{c.label} (TRL unpaired), {c.messages}+{c.label} "
        f"(LLaMA-Factory), {c.prompt}+{c.chosen}+{c.rejected} (paired) or conversations+kto_tag (ShareGPT)"
    )


def _present(record: dict, key: str) -> bool:
    # A null cell counts as absent: Parquet/Arrow rows carry every column of the file, so a file
    # mixing shapes has nulls in the columns a row does not use.
    return record.get(key) is not None


def _require(record: dict, keys: Sequence[str], columns: ColumnMap, source: str) -> None:
    for key in keys:
        if not _present(record, key):
            raise InputError(f"{source}: missing column '{key}'; {_shapes(columns)}")


def _base_id(record: dict, id_column: str, fallback: str, source: str) -> str:
    value = record.get(id_column)
    if value is None:
        return fallback
    if not str(value).strip():
        raise InputError(f"{source}: column '{id_column}': empty id")
    return _unicode(str(value), f"{source}: column '{id_column}'")


def _label(record: dict, columns: ColumnMap, source: str) -> bool:
    present = [k for k in (columns.label, _KTO_TAG) if k in record]
    if not present:
        missing = f"'{columns.label}' (or '{_KTO_TAG}')"
        raise InputError(f"{source}: missing column {missing}; {_shapes(columns)}")
    key = next((k for k in present if record[k] is not None), present[0])
    return parse_label(record[key], f"{source}: {key}")


def _paired(record: dict, columns: ColumnMap, base_id: str, source: str) -> list[Example]:
    _require(record, (columns.chosen, columns.rejected), columns, source)
    if _present(record, columns.prompt):
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
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
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
        return _nonempty(prompt, p_where, "prompt"), _nonempty(completion, c_where, "completion")
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
    """A completion: one or more assistant messages, each with non-empty text.

    `start` is the 1-based position of the first of them in the column, for error messages.
    """
    if not messages:
        raise InputError(f"{where}: empty completion (no assistant message)")
    for i, m in enumerate(messages, start):
        if m["role"] != "assistant":
            role = m["role"]
            raise InputError(f"{where}, message {i}: completion has role {role!r}, expected 'assistant'")
        _nonempty(m["content"], f"{where}, message {i}", "completion")
    return messages


def _messages(value: list, where: str) -> tuple[Message, ...]:
    return tuple(_message(raw, f"{where}, message {i}") for i, raw in enumerate(value, 1))


def _message(raw: Any, where: str) -> Message:
    """Normalise {role, content} or ShareGPT {from, value} to {"role", "content"}."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a message object with role and content, got {kind_name(raw)}")
    if raw.get("role") is not None:
        role, content = raw["role"], raw.get("content")
    elif raw.get("from") is not None:
        role, content = raw["from"], raw.get("value")
        role = _SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role
    else:
        raise InputError(f"{where}: message has no 'role' (or ShareGPT 'from')")
    if role not in ROLES:
        raise InputError(f"{where}: unknown role {shown(role)} (expected {', '.join(ROLES)})")
    return {"role": role, "content": _text(content, where)}


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
