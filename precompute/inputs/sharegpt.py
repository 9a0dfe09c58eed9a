"""LLaMA-Factory's ShareGPT shape, read as LLaMA-Factory reads it, plus the `system` and `tools`
columns that every conversational shape honours.

A ShareGPT row (column and role names as in LLaMA-Factory's `dataset_info.json`, all overridable):
- `conversations`: a list of `{"from", "value"}` turns. An optional leading `system` turn, then
  `human`/`observation` turns at odd positions and `gpt`/`function_call` turns at even ones (the
  rule LLaMA-Factory's converter applies);
- unpaired (KTO): the last turn is the completion, labelled by `kto_tag` (or the label column);
- paired: `chosen` and `rejected` are single `{"from", "value"}` turns answering `conversations`;
- through a `dataset_info.json` entry (--dataset, --sharegpt-info), every row is read by the
  entry's map, whatever its conversation column is named, as its `ranking` says: pairs (true),
  or completions labelled by its kto_tag alone (false; a `label` column is not read);
- `system`: a system prompt (text); `tools`: the tool schemas, a list or a JSON text of one (as
  LLaMA-Factory stores them), passed to the chat template as `tools=`.

A turn's value may be empty (an empty system turn, an empty reply), as a `messages` turn's
content may: both spellings of one dataset give the same ids.

Roles become the chat-template roles: human → user, gpt → assistant, observation → tool,
function_call → an assistant turn with `tool_calls` (its value is the JSON
`{"name", "arguments"}`, or a list of them), which is what Hugging Face chat templates render.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from kto.formats.errors import InputError
from kto.formats.files import regular_file, utf8_text

from .examples import (
    RANKING_ROWS,
    Example,
    ShareGPTMap,
    entry_column,
    entry_label,
    kind_name,
    label_of,
    missing_label,
    one_line,
    tool_calls_of,
    tools_of,
    with_system,
)


def load_sharegpt_info(spec: str | dict) -> ShareGPTMap:
    """A `dataset_info.json`-style entry: `{"columns": {...}, "tags": {...}}`, given inline (a
    mapping, from --config) or as `FILE` / `FILE#NAME` (NAME picks an entry of a dataset_info.json;
    a file of one entry needs none)."""
    where = "--sharegpt-info"
    if isinstance(spec, dict):
        entry = spec
    else:
        path, _, name = str(spec).partition("#")
        where = f"--sharegpt-info {spec}"
        regular_file(path, where)
        try:
            data = json.loads(utf8_text(path, where))
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: malformed JSON ({e.msg} at line {e.lineno})") from None
        entry = _pick_entry(data, name, where)
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object with 'columns' and/or 'tags'")
    fields = {}
    for group in ("columns", "tags"):
        values = entry.get(group) or {}
        if not isinstance(values, dict):
            raise InputError(f"{where}: '{group}' must be an object")
        fields.update(values)
    known = set(asdict(ShareGPTMap())) - {"entry"}
    # LLaMA-Factory keys that do not decide how a row is read here (prompt/query/response belong
    # to its alpaca shape; images/videos are not supported) are refused rather than ignored.
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return ShareGPTMap.from_entry(entry_ranking(entry, fields, where), **fields)


def entry_ranking(entry: dict, columns: dict, where: str) -> bool:
    """An entry's `ranking` (default false). LLaMA-Factory reads chosen/rejected only for
    ranking entries and kto_tag only for others: a map naming the other kind is refused."""
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise InputError(f"{where}: ranking must be true or false, got {ranking!r}")
    if ranking and "kto_tag" in columns:
        raise InputError(f"{where}: ranking is true, so rows are chosen/rejected pairs; a kto_tag column means ranking false")
    if not ranking and {"chosen", "rejected"} & set(columns):
        raise InputError(f"{where}: chosen/rejected columns need ranking: true")
    return ranking


def _pick_entry(data: Any, name: str, where: str) -> Any:
    if isinstance(data, dict) and ("columns" in data or "tags" in data) and not name:
        return data
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object")
    if name:
        if name not in data:
            raise InputError(f"{where}: no entry {name!r} (entries: {', '.join(sorted(data)) or 'none'})")
        return data[name]
    if len(data) != 1:
        raise InputError(f"{where}: {len(data)} entries; name one as FILE#NAME")
    return next(iter(data.values()))


# ---- ShareGPT rows ---------------------------------------------------------------------------


def sharegpt_examples(record: dict, smap: ShareGPTMap, label_column: str, base_id: str, source: str) -> list:
    """One row in ShareGPT shape -> one Example (kto_tag/label) or two (chosen/rejected).

    Through a dataset_info.json entry (`smap.entry`), the entry's `ranking` says which, and the
    label is its kto_tag alone; otherwise a row filling chosen or rejected is a pair."""
    where = f"{source}: column '{smap.messages}'"
    turns = entry_column(record, smap.messages, "messages", source) if smap.entry else record[smap.messages]
    if not isinstance(turns, list):
        raise InputError(f"{where}: expected a list of turns, got {kind_name(turns)}")
    messages = _conversation(turns, smap, where)
    tools = tools_of(record, smap, source)
    if smap.ranking or (not smap.entry and (_present(record, smap.chosen) or _present(record, smap.rejected))):
        return _pair_examples(record, smap, messages, tools, base_id, source)
    label = entry_label(record, smap.kto_tag, (smap.chosen, smap.rejected), source) if smap.entry else None
    if messages[-1]["role"] != "assistant" or messages[-2]["role"] == "system":
        raise InputError(f"{where}: must end with a {smap.assistant_tag!r} or {smap.function_tag!r} turn after at least one prompt turn (it is the completion)")
    label = _kto_label(record, smap, label_column, source) if label is None else label
    prompt = with_system(messages[:-1], record, smap, source)
    return [Example(base_id, prompt, messages[-1:], label, source, tools)]


def _pair_examples(record: dict, smap: ShareGPTMap, messages: tuple[dict, ...], tools: tuple[dict, ...], base_id: str, source: str) -> list:
    """A paired row: its conversation, answered by the single turns `chosen` and `rejected`."""
    answers = []
    for key, name in ((smap.chosen, "chosen"), (smap.rejected, "rejected")):
        if smap.entry:
            entry_column(record, key, name, source, RANKING_ROWS)
        elif not _present(record, key):
            raise InputError(f"{source}: missing column '{key}' (a paired ShareGPT row needs both)")
        answers.append((_completion_turn(record[key], smap, f"{source}: column '{key}'"),))
    if messages[-1]["role"] not in ("user", "tool"):
        raise InputError(
            f"{source}: column '{smap.messages}': a paired row's conversation must end with a {smap.user_tag!r} "
            f"or {smap.observation_tag!r} turn, answered by '{smap.chosen}'/'{smap.rejected}'"
        )
    prompt = with_system(messages, record, smap, source)
    return [Example(f"{base_id}:chosen", prompt, answers[0], True, source, tools), Example(f"{base_id}:rejected", prompt, answers[1], False, source, tools)]


def _conversation(turns: list, smap: ShareGPTMap, where: str) -> tuple[dict, ...]:
    """Turns -> messages, checking LLaMA-Factory's alternation: prompt-side tags at odd
    positions (1-based, after an optional system turn), reply-side tags at even ones."""
    messages = []
    offset = 0
    for i, raw in enumerate(turns, 1):
        role, value = _turn(raw, smap, f"{where}, turn {i}")
        if i == 1 and role == smap.system_tag:
            messages.append({"role": "system", "content": value})
            offset = 1
            continue
        asking = (i - offset) % 2 == 1
        allowed = (smap.user_tag, smap.observation_tag) if asking else (smap.assistant_tag, smap.function_tag)
        if role not in allowed:
            raise InputError(f"{where}, turn {i}: role {role!r} out of place (expected {' or '.join(map(repr, allowed))})")
        messages.append(_message(role, value, smap, f"{where}, turn {i}"))
    if len(messages) == offset:
        raise InputError(f"{where}: no turns besides the system prompt")
    return tuple(messages)


def _turn(raw: Any, smap: ShareGPTMap, where: str) -> tuple[str, str]:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected an object with '{smap.role_tag}' and '{smap.content_tag}', got {kind_name(raw)}")
    role, value = raw.get(smap.role_tag), raw.get(smap.content_tag)
    if not isinstance(role, str):
        raise InputError(f"{where}: '{smap.role_tag}' must be text, got {kind_name(role)}")
    known = (smap.user_tag, smap.assistant_tag, smap.observation_tag, smap.function_tag, smap.system_tag)
    if role not in known:
        raise InputError(f"{where}: unknown role {role!r} (expected {', '.join(known)})")
    # An empty value is read as the `messages` shape reads an empty content (and as LLaMA-Factory's
    # converter, which checks roles alone): an empty system turn renders an empty system block, as
    # TRL renders it, and an empty reply trains as the template's closing tokens.
    if not isinstance(value, str):
        raise InputError(f"{where}: '{smap.content_tag}' must be text, got {_short(value)}")
    return role, value


def _message(role: str, value: str, smap: ShareGPTMap, where: str) -> dict:
    if role == smap.user_tag:
        return {"role": "user", "content": value}
    if role == smap.assistant_tag:
        return {"role": "assistant", "content": value}
    if role == smap.observation_tag:
        return {"role": "tool", "content": value}
    return {"role": "assistant", "content": "", "tool_calls": tool_calls_of(value, where)}


def _completion_turn(raw: Any, smap: ShareGPTMap, where: str) -> dict:
    role, value = _turn(raw, smap, where)
    if role not in (smap.assistant_tag, smap.function_tag):
        raise InputError(f"{where}: role {role!r}, expected {smap.assistant_tag!r} or {smap.function_tag!r}")
    return _message(role, value, smap, where)


def _kto_label(record: dict, smap: ShareGPTMap, label_column: str, source: str) -> bool:
    label = label_of(record, (smap.kto_tag, label_column), source)
    if label is not None:
        return label
    rest = f" for an unpaired ShareGPT row; a paired row needs '{smap.chosen}' and '{smap.rejected}'"
    raise missing_label(record, (smap.kto_tag, label_column), source, rest)


# ---- system and tools columns, for every conversational shape ----------------------------------


def _present(record: dict, key: str) -> bool:
    return record.get(key) is not None


def _short(value: Any, limit: int = 60) -> str:
    text = one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
