"""kto-train's package. `kto.train.run(TrainConfig(...))` is the Python API (api.py), with
`kto.train.evaluate_model` for --eval-only, resolved lazily so that importing this package loads neither torch nor a model."""

_LAZY = {"TrainConfig": "config", "run": "api", "TrainResult": "api", "evaluate_model": "api"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy names too, so that a notebook's completion of `kto.train.` offers them."""
    return sorted([*globals(), *_LAZY])
