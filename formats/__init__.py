"""The contract between kto-precompute, kto-train and kto-inspect (see ARCHITECTURE.md).

`kto.formats.scan(cache_dir)` is resolved lazily, so importing this package never imports
polars (it stays out of the training import path).
"""


def __getattr__(name: str):
    if name == "scan":
        from .scanning import scan

        return scan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
