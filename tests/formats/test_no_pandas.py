"""pandas is not a dependency: the shard writer and reader run without it.

pyarrow 15 to 25 import pandas in `DataType.to_pandas_dtype()`; with it in the writer,
kto-precompute crashed with ModuleNotFoundError: pandas wherever pandas was not installed
(the `hf` extra brings it through datasets, so only an install without it saw the crash).
"""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kto.formats import schema as S

ROOT = Path(__file__).resolve().parents[2]

# Run with pandas unimportable, as where it is not installed: every `import pandas` fails.
# (pyarrow probes for it in pa.array and pa.table and takes the ImportError as "no pandas
# objects here"; to_pandas_dtype on pyarrow 15 to 25 let it escape.)
_SCRIPT = r"""
import sys


class _NoPandas:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'")


sys.modules.pop("pandas", None)
sys.meta_path.insert(0, _NoPandas())

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from pathlib import Path

from kto.formats import schema as S
from kto.formats import shards

out = Path(sys.argv[1])
table = shards.shard_table(
    {
        S.ID: ["a", "b", "c"],
        S.LABEL: [True, False, True],
        S.PROMPT_IDS: [np.array([1, 2], np.int32), np.array([3], np.int32), np.array([4, 5, 6], np.int32)],
        S.COMPLETION_IDS: [[7], [8, 9], []],
        S.REF_LOGP: [-1.5, -2.25, 0.0],
    },
    fill_missing=True,
)
sha = shards.write_shard(out, table, {"kto.test": "1"})
with ipc.open_file(out) as reader:
    read = reader.read_all()
prompts = S.from_arrow(read.column(S.PROMPT_IDS))
completions = S.from_arrow(read.column(S.COMPLETION_IDS))
empty = S.from_arrow(pa.chunked_array([], type=pa.list_(pa.float32())))
print(len(sha), read.num_rows, read.column(S.TRUNCATED).to_pylist(), read.column(S.REF_KL_LOGP).to_pylist())
print(prompts.values.tolist(), prompts.offsets.tolist(), prompts.values.dtype, completions.values.tolist(), completions.offsets.tolist())
print(empty.values.dtype, len(empty.values), "pandas" in sys.modules)
"""


def test_a_shard_is_written_and_read_back_without_pandas(tmp_path):
    path = tmp_path / "shard-00000.arrow"
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "64 3 [False, False, False] [0.0, 0.0, 0.0]",
        "[1, 2, 3, 4, 5, 6] [0, 2, 3, 6] int32 [7, 8, 9] [0, 1, 3, 3]",
        "float32 0 False",
    ]
    assert path.is_file()


@pytest.mark.parametrize(
    ("arrow", "numpy"),
    [(pa.int32(), np.int32), (pa.int64(), np.int64), (pa.float32(), np.float32), (pa.float64(), np.float64), (pa.bool_(), np.bool_)],
)
def test_numpy_dtype_of_each_arrow_type_the_schema_uses(arrow, numpy):
    assert S.numpy_dtype(arrow) == np.dtype(numpy)


def test_every_declared_column_type_has_a_numpy_dtype():
    """The value type of each list column and each number/bool column of the shard schema."""
    types = {c.type.value_type if c.is_list else c.type for c in S.COLUMNS if not c.is_string}
    assert {str(t): str(S.numpy_dtype(t)) for t in types} == {"int32": "int32", "float": "float32", "double": "float64", "bool": "bool"}


def test_the_package_never_calls_to_pandas_dtype():
    """Its pandas import is lazy and pyarrow-version dependent (15 to 25 import it, 26 does
    not), so the subprocess test passes on a new pyarrow whatever the code calls: this one
    catches a call back in wherever the suite runs."""
    calls = []
    for folder in ("formats", "precompute", "train", "inspection"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Attribute) and node.attr == "to_pandas_dtype":
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls == []
