"""kto-inspect summary on a cache with unequal label counts: desirable and undesirable are
each counted, not one inferred as the other."""

import json

from click.testing import CliRunner
from conftest import chat_rows, make_cache


def test_summary_counts_unequal_labels(tmp_path, tiny_model_dir):
    from kto.inspection.cli import main

    rows = chat_rows()
    kept = [r for r in rows if r["label"]] + [r for r in rows if not r["label"]][:3]  # 8 desirable, 3 undesirable
    cache = make_cache(tmp_path, kept, tiny_model_dir, "chat.jsonl")
    result = CliRunner().invoke(main, ["summary", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["counts"] == {"rows": 11, "desirable": 8, "undesirable": 3}
    assert set(s["ref_logps"]) == {"desirable", "undesirable"}
