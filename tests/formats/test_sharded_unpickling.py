"""An FSDP checkpoint's DCP folder (sharded/) is read without unpickling arbitrary objects
(formats/compute/safe_dcp.py): .metadata through an unpickler that builds only checkpoint
metadata classes, bytes items through torch.load(weights_only=True), and a key that the loader
asks for as a tensor but .metadata stores as bytes refused. Each hostile payload here would
append to a file in tmp_path if it ran; the tests assert the file never appears.

The checkpoints are made as train/sharding.py lays them out ({"model": keys "lm.<HF key>",
"optimizer": get_state_dict's}), by dcp.save in one process (no_dist), not by an FSDP launch
(tests/train/test_sharding.py runs those, resume included)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from kto.formats.errors import InputError


class Payload:
    """Appends to `marker` when unpickled, with `how` (os.system or builtins.eval)."""

    def __init__(self, marker: Path, how: str = "system") -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "eval":
            return (eval, (f"open({str(self.marker)!r}, 'a').write('ran')",))
        return (os.system, (f"echo ran >> '{self.marker}'",))


class Root(torch.nn.Module):
    """CompletionLogps's shape: the HF model under `lm`, so keys are "lm.<HF key>"."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm


def trained_root(model_dir: Path) -> tuple[Root, torch.optim.Optimizer]:
    """The tiny model after one AdamW step (weights unlike --base-model's, optimizer state set)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    root = Root(AutoModelForCausalLM.from_pretrained(model_dir))
    optimizer = torch.optim.AdamW(root.parameters(), lr=1e-2)
    sum((p * torch.randn_like(p)).sum() for p in root.parameters()).backward()
    optimizer.step()
    return root, optimizer


def save_sharded(checkpoint: Path, root: Root, optimizer: torch.optim.Optimizer, model_extra: dict | None = None, lr: object = None) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(root, optimizer)
    model_sd.update(model_extra or {})
    if lr is not None:
        optim_sd["param_groups"][0]["lr"] = lr
    with pytest.warns(UserWarning, match="torch.distributed is disabled"):
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=checkpoint / "sharded", no_dist=True)
    return checkpoint


def fresh(model_dir: Path) -> Root:
    from transformers import AutoModelForCausalLM

    return Root(AutoModelForCausalLM.from_pretrained(model_dir))


def load_weights(root: Root, checkpoint: Path) -> None:
    from kto.formats.compute.sharded import load_sharded_weights

    load_sharded_weights(root.lm, checkpoint)


def test_a_sharded_checkpoint_loads_bit_identically_weights_and_optimizer_state(tiny_model_dir, tmp_path):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from kto.formats.compute import safe_dcp

    root, optimizer = trained_root(tiny_model_dir)
    ckpt = save_sharded(tmp_path / "checkpoint-2", root, optimizer)
    # kto-inspect score / export and --eval-only: the weights onto a model built from --base-model.
    loaded = fresh(tiny_model_dir)
    load_weights(loaded, ckpt)
    want, got = root.lm.state_dict(), loaded.lm.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not torch.equal(want["model.norm.weight"], fresh(tiny_model_dir).lm.state_dict()["model.norm.weight"])  # a real load
    # An FSDP --resume (train/sharding.py load_checkpoint): the model and the optimizer, whose
    # param_groups are bytes items (floats, a tuple, strings), read weights_only.
    again = fresh(tiny_model_dir)
    opt2 = torch.optim.AdamW(again.parameters(), lr=0.5, betas=(0.1, 0.2))
    model_sd, optim_sd = get_state_dict(again, opt2)
    state = {"model": model_sd, "optimizer": optim_sd}
    folder = safe_dcp.DcpFolder(ckpt / "sharded", "--resume", ckpt)
    with pytest.warns(UserWarning, match="torch.distributed is disabled"):
        safe_dcp.load(state, folder, safe_dcp.read_metadata(folder), no_dist=True)
    saved_model, saved_optim = get_state_dict(root, optimizer)
    assert all(torch.equal(saved_model[k], state["model"][k]) for k in saved_model)
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], tuple(group["betas"])) == (1e-2, (0.9, 0.999))
    for name, moments in saved_optim["state"].items():
        assert all(torch.equal(v, state["optimizer"]["state"][name][k]) for k, v in moments.items())


def real_metadata(tiny_model_dir: Path, tmp_path: Path):
    root, optimizer = trained_root(tiny_model_dir)
    ckpt = save_sharded(tmp_path / "checkpoint-2", root, optimizer)
    with open(ckpt / "sharded" / ".metadata", "rb") as f:
        return ckpt, pickle.load(f)  # our own, just written


def test_a_metadata_pickle_naming_anything_but_metadata_classes_is_refused_and_never_run(tiny_model_dir, tmp_path):
    marker = tmp_path / "PWNED"
    ckpt, metadata = real_metadata(tiny_model_dir, tmp_path)
    metadata.storage_meta.modules = [Payload(marker)]  # a payload inside otherwise real metadata
    system = f"{os.system.__module__}.system"  # posix.system
    cases = [
        (system, pickle.dumps(Payload(marker))),
        ("builtins.eval", pickle.dumps(Payload(marker, "eval"))),
        ("torch.load", f"ctorch\nload\n(V{marker}\ntR.".encode()),  # module torch, but not a dtype
        (system, pickle.dumps(metadata)),
    ]
    for what, data in cases:
        (ckpt / "sharded" / ".metadata").write_bytes(data)
        with pytest.raises(InputError) as refused:
            load_weights(fresh(tiny_model_dir), ckpt)
        assert str(refused.value) == f"--model {ckpt}: sharded/.metadata holds a pickled object that is not checkpoint metadata ({what}); not loaded"
        assert not marker.exists(), what


def test_the_export_command_refuses_it_in_one_error_line_and_writes_nothing(tiny_model_dir, tmp_path):
    from click.testing import CliRunner

    from kto.inspection.cli import main

    marker = tmp_path / "PWNED"
    root, optimizer = trained_root(tiny_model_dir)
    ckpt = save_sharded(tmp_path / "checkpoint-2", root, optimizer)
    (ckpt / "sharded" / ".metadata").write_bytes(pickle.dumps(Payload(marker, "eval")))
    result = CliRunner().invoke(main, ["export", str(ckpt), str(tmp_path / "exported"), "--base-model", str(tiny_model_dir)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    *notes, line = result.output.strip().splitlines()  # its note of what it loads, then the error
    assert [n.startswith("loading the weights of") for n in notes] == [True]
    assert (
        line == f"kto-inspect: error: CHECKPOINT {ckpt}: sharded/.metadata holds a pickled object that is not checkpoint metadata (builtins.eval); not loaded"
    )
    assert not marker.exists() and not (tmp_path / "exported").exists()


def test_a_weight_stored_as_pickled_bytes_is_refused_before_loading(tiny_model_dir, tmp_path):
    marker = tmp_path / "PWNED"
    root, optimizer = trained_root(tiny_model_dir)
    # dcp.save stores a value that is not a tensor as bytes (torch.save of the object).
    ckpt = save_sharded(tmp_path / "checkpoint-2", root, optimizer, {"lm.model.norm.weight": Payload(marker)})
    with pytest.raises(InputError) as refused:
        load_weights(fresh(tiny_model_dir), ckpt)
    assert str(refused.value) == f"--model {ckpt}: sharded/.metadata stores model.lm.model.norm.weight as pickled bytes, not a tensor; not loaded"
    assert not marker.exists()


def test_a_bytes_item_holding_an_object_is_read_weights_only_and_refused(tiny_model_dir, tmp_path):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from kto.formats.compute import safe_dcp

    marker = tmp_path / "PWNED"
    root, optimizer = trained_root(tiny_model_dir)
    ckpt = save_sharded(tmp_path / "checkpoint-2", root, optimizer, lr=Payload(marker))  # a param_groups value
    again = fresh(tiny_model_dir)
    model_sd, optim_sd = get_state_dict(again, torch.optim.AdamW(again.parameters()))
    folder = safe_dcp.DcpFolder(ckpt / "sharded", "--resume", ckpt)
    with pytest.raises(InputError) as refused, pytest.warns(UserWarning, match="torch.distributed is disabled"):
        safe_dcp.load({"model": model_sd, "optimizer": optim_sd}, folder, safe_dcp.read_metadata(folder), no_dist=True)
    assert str(refused.value) == f"--resume {ckpt}: sharded/ holds optimizer.param_groups.0.lr as a pickled object that is not plain data; not loaded"
    assert not marker.exists()


def test_metadata_pointing_outside_its_folder_is_refused(tiny_model_dir, tmp_path):
    ckpt, metadata = real_metadata(tiny_model_dir, tmp_path)
    info = next(iter(metadata.storage_data.values()))
    info.relative_path = "../../elsewhere.distcp"
    (ckpt / "sharded" / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(InputError) as refused:
        load_weights(fresh(tiny_model_dir), ckpt)
    assert str(refused.value) == f"--model {ckpt}: sharded/.metadata points at '../../elsewhere.distcp', not a file of sharded/; not loaded"


def test_state_set_on_an_allowed_class_itself_is_refused_and_changes_nothing(tiny_model_dir, tmp_path):
    """A reviewer's attack with allowed names only: `GLOBAL pathlib PosixPath`, a state
    {'_str': target}, BUILD (which sets class attributes when given a class), then the genuine
    metadata. Every Path of the process then named the target, and a notebook's next write went
    into it. BUILD is taken only on the metadata dataclasses' own instances."""
    import struct

    ckpt, _ = real_metadata(tiny_model_dir, tmp_path)
    target = str(tmp_path / "victim")
    original = (ckpt / "sharded" / ".metadata").read_bytes()
    text = lambda s: b"X" + struct.pack("<I", len(s.encode())) + s.encode()
    poison = b"cpathlib\nPosixPath\nN}" + text("_str") + text(target) + b"s\x86b0"
    for prefix, what in ((b"cpathlib\nPosixPath\n", "pathlib.PosixPath"), (b"ctorch.serialization\n_get_layout\n", "builtins.function")):
        (ckpt / "sharded" / ".metadata").write_bytes(original[:2] + poison.replace(b"cpathlib\nPosixPath\n", prefix) + original[2:])
        with pytest.raises(InputError) as refused:
            load_weights(fresh(tiny_model_dir), ckpt)
        assert str(refused.value).endswith(f"not checkpoint metadata (state set on {'builtins.type' if 'Path' in what else what}); not loaded")
        assert str(Path("/etc/passwd")) == "/etc/passwd" and not hasattr(Path, "_str") or Path.__dict__.get("_str") is None


def test_an_item_file_that_is_no_regular_file_is_refused_not_waited_on(tiny_model_dir, tmp_path):
    """A FIFO in place of a .distcp blocked the load forever (a one-line refusal of the FIFO
    .metadata was there already)."""
    ckpt, _ = real_metadata(tiny_model_dir, tmp_path)
    shard = next((ckpt / "sharded").glob("*.distcp"))
    shard.unlink()
    os.mkfifo(shard)
    with pytest.raises(InputError) as refused:
        load_weights(fresh(tiny_model_dir), ckpt)
    assert str(refused.value) == f"--model {ckpt}: sharded/{shard.name}: not a regular file; not loaded"
