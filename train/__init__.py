"""kto-train's package. `kto.train.run(TrainConfig(...))` is the Python API (api.py), with
`kto.train.evaluate_model` for --eval-only, resolved lazily so that importing this package loads neither torch nor a model."""


def __getattr__(name: str):
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    if name in ("run", "TrainResult", "evaluate_model"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
