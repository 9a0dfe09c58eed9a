"""The polars recipes in docs/inspect.md run as written (paths swapped for test ones)."""

import re
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "inspect.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture
def scores(tiny_cache, tmp_path):
    """A scores file shaped like `kto-inspect score`'s (the command itself is tested elsewhere)."""
    import pyarrow as pa

    import kto.formats
    from kto.inspection.score import SCORE_SCHEMA

    cache = kto.formats.scan(tiny_cache).select("id", "label", "ref_logp").collect()
    policy = cache["ref_logp"] + pl.Series(range(cache.height)) * 0.1 - 0.8
    table = pa.table(
        {
            "id": cache["id"].to_list(),
            "label": cache["label"].to_list(),
            "policy_logp": policy.to_list(),
            "ref_logp": cache["ref_logp"].to_list(),
            "reward": (0.1 * (policy - cache["ref_logp"])).to_list(),
        },
        schema=SCORE_SCHEMA,
    )
    pq.write_table(table, tmp_path / "scores.parquet")
    return tmp_path / "scores.parquet"


def test_recipes_run(tiny_cache, scores):
    blocks = python_blocks()
    assert len(blocks) == 4
    results = []
    for code in blocks:
        code = code.replace('"cache"', repr(str(tiny_cache))).replace('"scores.parquet"', repr(str(scores)))
        scope: dict = {}
        exec(compile(code, str(DOC), "exec"), scope)
        results.append(scope)
    assert results[1]["worst"].height == 16  # fewer than 20 rows in the tiny cache
    per_token = results[1]["worst"]["per_token"].to_list()
    assert per_token == sorted(per_token)
    by_label = results[2]["by_label"]
    assert by_label["rows"].to_list() == [8, 8]
    joined = results[3]["joined"]
    assert joined["id"].to_list() == pq.read_table(scores).column("id").to_pylist()
    assert isinstance(joined, pl.DataFrame) and joined.height == 16
