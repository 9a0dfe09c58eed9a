"""kto-precompute's package. `kto.precompute.run(PrecomputeConfig(...))` is the Python API
(api.py), resolved lazily so that importing this package loads neither torch nor a model.
`ColumnMap`, `ShareGPTMap` and `AlpacaMap` are PrecomputeConfig's column-mapping fields' types."""

_LAZY = {
    "PrecomputeConfig": "config",
    "run": "api",
    "PrecomputeResult": "api",
    "ColumnMap": "inputs.examples",
    "ShareGPTMap": "inputs.examples",
    "AlpacaMap": "inputs.alpaca",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, so that a notebook's completion of `kto.precompute.` offers them."""
    return sorted([*globals(), *_LAZY])
