"""kto-precompute's package. `kto.precompute.run(PrecomputeConfig(...))` is the Python API
(api.py), resolved lazily so that importing this package loads neither torch nor a model."""


def __getattr__(name: str):
    if name == "PrecomputeConfig":
        from .config import PrecomputeConfig

        return PrecomputeConfig
    if name in ("run", "PrecomputeResult"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
