"""formats/compute/gguf_once.py: one parse of a GGUF file per process while the file is unchanged,
gguf-py left as it was outside the block. The real model's load (tokenizer, config and weights
from one parse) is tested in tests/precompute/test_smollm2.py."""

import os
from pathlib import Path

import pytest

from kto.formats.compute.gguf_once import parsed_once

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")


def write_gguf(path: Path, value: int) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("test.value", value)
    writer.add_tensor("blk.0.attn_q.weight", np.arange(8, dtype=np.float32) * value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def value_of(reader) -> int:
    return int(reader.fields["test.value"].parts[-1][0])


def test_one_parse_while_the_file_is_unchanged_and_a_new_one_when_it_changes(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", 7)
    with parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first  # another spelling of the same file
        assert value_of(first) == 7 and first.tensors[0].data.tolist() == [7.0 * i for i in range(8)]
        write_gguf(path, 9)  # rewritten in place, the same size: its mtime tells it apart
        os.utime(path, ns=(1, 1))  # (set, in case the file system's clock is coarser than this test)
        second = gguf.GGUFReader(path)
        assert second is not first and value_of(second) == 9
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)  # outside the block: gguf-py's own


def test_gguf_py_is_restored_after_an_error_and_writable_maps_are_never_shared(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", 3)
    reader_class, name_table = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError), parsed_once():
        assert gguf.GGUFReader(path, "r+") is not gguf.GGUFReader(path, "r+")
        raise RuntimeError("a failed load")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader_class, name_table)


def test_a_tensor_name_table_is_built_once_per_architecture_and_depth():
    with parsed_once():
        table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is table
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 3) is not table
        assert table.get_name("model.layers.1.self_attn.q_proj") == "blk.1.attn_q"


def test_the_models_load_drops_the_parse_and_other_models_leave_gguf_py_alone(tmp_path):
    from kto.formats.compute import gguf_once

    path = write_gguf(tmp_path / "m.gguf", 5)
    with gguf_once.gguf_loads("m.gguf"):  # the tokenizer's load: kept for the model's
        gguf.GGUFReader(path)
    assert gguf_once._PARSED
    with gguf_once.gguf_loads("m.gguf", last=True):
        gguf.GGUFReader(path)
    assert not gguf_once._PARSED  # the model's load was the last use
    reader_class = gguf.GGUFReader
    with gguf_once.gguf_loads(None, last=True):  # a safetensors model: nothing patched
        assert gguf.GGUFReader is reader_class
