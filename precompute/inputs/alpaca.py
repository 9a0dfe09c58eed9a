"""LLaMA-Factory's alpaca shape, read as LLaMA-Factory's converter reads it.

An alpaca row (column names from `dataset_info.json`'s `columns`, LLaMA-Factory's defaults here):
- `instruction` (and an optional `input`, joined to it with a newline) is the last user turn;
- `history`: earlier `[user, assistant]` pairs, before it, read only when `columns` names it;
- unpaired (KTO): `output` is the completion, labelled by `kto_tag`;
- ranking (paired): `chosen` and `rejected` are the two completions (texts);
- `system` (the ShareGPT map's system column, as for every conversational shape).

Rows become conversational Examples (a user turn, an assistant completion), which is what
LLaMA-Factory trains on through its template.

The query and history columns are read as LLaMA-Factory's parser sets them: without `columns`,
`input` and no history; with `columns`, only the ones it names (its `set_attr` gives every name
the map leaves out None), so a row's `input` is not joined to a map that leaves out `query`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kto.formats.errors import InputError

from .examples import RANKING_ROWS, Example, ShareGPTMap, entry_column, entry_label, kind_name, label_of, missing_label, require_names, with_system


@dataclass(frozen=True)
class AlpacaMap:
    """Alpaca column names, with LLaMA-Factory's defaults and its `dataset_info.json` keys."""

    prompt: str = "instruction"
    # "" reads no such column: LLaMA-Factory's default history is None, and a `columns` map
    # that leaves out query or history makes them None (from_entry).
    query: str = "input"
    response: str = "output"
    history: str = ""
    chosen: str = "chosen"
    rejected: str = "rejected"
    kto_tag: str = "kto_tag"

    def __post_init__(self) -> None:
        require_names(self, "alpaca map", optional=("query", "history"))

    @classmethod
    def from_entry(cls, columns: dict[str, str]) -> AlpacaMap:
        """The map of a dataset_info.json entry's `columns`: with a map, a query or history
        column it does not name is not read (LLaMA-Factory's `set_attr` makes it None); prompt,
        response and the label keep their defaults (there, None would break every row)."""
        names = {k: v for k, v in columns.items() if k != "system"}  # the ShareGPT map's column
        return cls(**({"query": "", "history": "", **names} if columns else {}))

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def alpaca_examples(record: dict, amap: AlpacaMap, smap: ShareGPTMap, label_column: str, base_id: str, source: str) -> list[Example]:
    """One alpaca row -> one Example (kto_tag/label) or two (chosen/rejected).

    Through a dataset_info.json entry (`smap.entry`), the entry's `ranking` says which, and the
    label is its kto_tag alone; otherwise a row filling chosen or rejected is a pair."""
    prompt = with_system(_history(record, amap, source) + (_user_turn(record, amap, source),), record, smap, source)
    if smap.ranking or (not smap.entry and (record.get(amap.chosen) is not None or record.get(amap.rejected) is not None)):
        if smap.entry:
            for key, name in ((amap.chosen, "chosen"), (amap.rejected, "rejected")):
                entry_column(record, key, name, source, RANKING_ROWS)
        answers = [_text(record, key, source) for key in (amap.chosen, amap.rejected)]
        return [
            Example(f"{base_id}:chosen", prompt, (_assistant(answers[0]),), True, source),
            Example(f"{base_id}:rejected", prompt, (_assistant(answers[1]),), False, source),
        ]
    if smap.entry:
        label = entry_label(record, amap.kto_tag, (amap.chosen, amap.rejected), source)
        return [Example(base_id, prompt, (_assistant(_text(record, amap.response, source)),), label, source)]
    completion = (_assistant(_text(record, amap.response, source)),)
    label = label_of(record, (amap.kto_tag, label_column), source)
    if label is not None:
        return [Example(base_id, prompt, completion, label, source)]
    rest = f" for an unpaired alpaca row; a ranking row needs '{amap.chosen}' and '{amap.rejected}'"
    raise missing_label(record, (amap.kto_tag, label_column), source, rest)


def _user_turn(record: dict, amap: AlpacaMap, source: str) -> dict:
    """The instruction, a newline, the input, as LLaMA-Factory joins the non-empty ones: both
    empty is an empty user turn (its converter checks no text), both missing is refused."""
    keys = [k for k in (amap.prompt, amap.query) if k and record.get(k) is not None]
    for k in keys:
        if not isinstance(record[k], str):
            raise InputError(f"{source}: column '{k}': expected text, got {kind_name(record[k])}")
    if not keys:
        raise InputError(f"{source}: missing column '{amap.prompt}' (the alpaca instruction)")
    return {"role": "user", "content": "\n".join(record[k] for k in keys if record[k])}


def _history(record: dict, amap: AlpacaMap, source: str) -> tuple[dict, ...]:
    turns = record.get(amap.history) if amap.history else None
    if turns is None:
        return ()
    where = f"{source}: column '{amap.history}'"
    if not isinstance(turns, list):
        raise InputError(f"{where}: expected a list of [instruction, response] pairs, got {kind_name(turns)}")
    out: list[dict] = []
    for i, pair in enumerate(turns, 1):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise InputError(f"{where}, pair {i}: expected [instruction, response], two texts")
        out += [{"role": "user", "content": pair[0]}, _assistant(pair[1])]
    return tuple(out)


def _text(record: dict, key: str, source: str) -> str:
    value: Any = record.get(key)
    if not isinstance(value, str):  # empty is read: an empty reply trains, as in the other shapes
        raise InputError(f"{source}: column '{key}': expected text, got {kind_name(value)}")
    return value


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
