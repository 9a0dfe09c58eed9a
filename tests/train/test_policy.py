"""Issue 20: LoRA and FSDP are rooms behind one policy object, chosen once at setup; the loop
saves and finishes through it and never asks which room it is in."""

import ast
from pathlib import Path

import kto.train.loop as loop
import kto.train.policy as policy


def imported_train_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module] if node.module else [alias.name for alias in node.names])
    return names


def test_the_loop_names_neither_adapters_nor_sharding():
    """Seen failing before: loop.py imported both and made 11 calls into them (save/finish held
    four ways to save)."""
    assert not {"adapters", "sharding"} & imported_train_modules(Path(loop.__file__))


def test_every_pair_of_strategies_fills_the_policy_interface():
    """Each Trainable and Layout has every member its protocol names, so any of the four pairs
    can stand behind Policy."""
    for protocol, strategies in ((policy.Trainable, (policy.FullWeights, policy.LoraAdapters)), (policy.Layout, (policy.WholeCopies, policy.Shards))):
        members = {n for n in vars(protocol) if not n.startswith("_")} | set(protocol.__annotations__)
        for strategy in strategies:
            fields = set(strategy.__dataclass_fields__)
            missing = sorted(m for m in members if not hasattr(strategy, m) and m not in fields)
            assert not missing, (strategy.__name__, missing)
