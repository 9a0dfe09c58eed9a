"""Rows of columnar sources (Parquet, Arrow IPC, `datasets`) read as their JSON Lines would be:
objects nested in a column lose the null keys Arrow's struct merge added, `Json` columns are
parsed, and a ClassLabel label column reads by its class names (columnar_reader). records.py
reads files through it and hub.py `datasets` rows; their identities say so (hub.COLUMNAR_READING)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

import pyarrow as pa

LABEL_COLUMNS = ("label", "kto_tag")  # the label columns a row is read for by default (ColumnMap, ShareGPTMap)
_Read = Callable[[Any], Any]


def columnar_reader(schema: pa.Schema, label_columns: Collection[str], decode_json: bool) -> Callable[[dict], dict] | None:
    """How a row of a columnar source (Parquet, Arrow, `datasets`) of `schema` is read so that it
    equals the row's JSON Lines; None where rows are read as they are (flat columns, no
    ClassLabel label).

    - An object nested in a column (a message, a tool call, its arguments, a tool schema) loses
      its null keys: Arrow stores objects as structs with one set of fields for the column, so
      rows whose calls take other arguments (`{"tz": ...}`, `{"city": ...}`) each read the other's
      as null, which chat templates render (`"city": null`). JSON Lines keep a null written
      there; here no null can be told from an added one, and TRL (remove_none_values) drops them
      all too. A row's own columns keep theirs (a null label is refused as null).
    - A column `datasets` declares `Json` (Arrow `arrow.json`, or the `huggingface` schema
      metadata), anywhere in the row: its JSON text parsed (`decode_json`; datasets' own reads
      parse it already), kept as parsed, nulls included.
    - A label column (`label_columns`: those a shape reads a label from) declared a ClassLabel
      reads by its class names (ClassName), as parse_label reads them; its index would be read
      as the label (0 as false). Other ClassLabel columns keep their indices."""
    features = _features(schema)
    readers = {f.name: _value_reader(f.type, features.get(f.name), decode_json) for f in schema}
    readers = {name: read for name, read in readers.items() if read is not None}
    labels = _class_labels(features, label_columns)
    if not (readers or labels):
        return None

    def read(record: dict) -> dict:
        row = dict(record)
        for name, value_reader in readers.items():
            if row.get(name) is not None:
                row[name] = value_reader(row[name])
        for name, names in labels.items():
            if name in row:
                row[name] = _class_name(row[name], names)
        return row

    return read


def _features(schema: pa.Schema) -> dict:
    """The `datasets` Features that `schema`'s `huggingface` metadata declares ({} if none)."""
    try:
        features = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, TypeError, ValueError):
        return {}
    return features if isinstance(features, dict) else {}


def _is_json(dtype: pa.DataType, feature: Any) -> bool:
    if getattr(dtype, "extension_name", None) == "arrow.json":
        return True
    text = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    return text and isinstance(feature, dict) and feature.get("_type") == "Json"


def _value_reader(dtype: pa.DataType, feature: Any, decode_json: bool) -> _Read | None:
    """The reader of one value of Arrow type `dtype` (datasets `feature`, or None), None where
    the value is read as it is (columnar_reader: structs lose null keys, Json text is parsed)."""
    if _is_json(dtype, feature):
        return json.loads if decode_json else None
    if pa.types.is_struct(dtype):
        children = {f.name: _value_reader(f.type, _field_feature(feature, f.name), decode_json) for f in dtype}
        return lambda value: _struct(value, children)
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        item = _value_reader(dtype.value_type, _item_feature(feature), decode_json)
        return None if item is None else (lambda value: [v if v is None else item(v) for v in value])
    return None


def _struct(value: Any, children: dict[str, _Read | None]) -> Any:
    if not isinstance(value, dict):
        return value
    return {k: (read(v) if (read := children.get(k)) is not None else v) for k, v in value.items() if v is not None}


def _field_feature(feature: Any, name: str) -> Any:
    if isinstance(feature, dict) and "_type" not in feature:
        return feature.get(name)
    return None


def _item_feature(feature: Any) -> Any:
    if isinstance(feature, dict) and feature.get("_type") in ("List", "LargeList", "Sequence"):
        return feature.get("feature")
    return None


def _without_nulls(value: Any) -> Any:
    """TRL's remove_none_values: every object below a row's columns without its null keys."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def without_nulls_row(record: dict) -> dict:
    return {k: _without_nulls(v) for k, v in record.items()}


def _class_labels(features: dict, label_columns: Collection[str]) -> dict[str, list[str]]:
    """The label columns declared ClassLabel -> their class names."""
    labels = {}
    for name in dict.fromkeys(label_columns):
        feature = features.get(name)
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
            labels[name] = [str(n) for n in feature["names"]]
    return labels


class ClassName(str):
    """A ClassLabel index read as its class name, which parse_label reads where a row's label is
    read from its column (`desirable`, `no`, ...); a name that is no label (`negative`, a topic)
    is refused there, at that row, showing the index (repr). Where no label is read from the
    column (paired rows, another --label-column), nothing is refused: the columns of a row's
    shape are only known per row (records._row_examples), after this read."""

    index: int

    def __new__(cls, name: str, index: int) -> ClassName:
        value = super().__new__(cls, name)
        value.index = index
        return value

    def __repr__(self) -> str:
        return f"{str.__repr__(self)} (ClassLabel index {self.index})"

    def __reduce__(self) -> tuple:
        return ClassName, (str(self), self.index)


def _class_name(value: Any, names: list[str]) -> Any:
    """A ClassLabel index as its name; -1 (datasets' "no label") as null; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(names):
            return ClassName(names[value], value)
        if value == -1:
            return None
    return value
