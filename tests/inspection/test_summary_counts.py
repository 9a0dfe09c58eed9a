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


def test_summary_counts_repeated_rows_and_rows_rated_both_ways(tmp_path, tiny_model_dir, tiny_cache):
    """16 rows, then: row 0 twice more with its label (2 repeats), row 1 once more (1 repeat), and
    row 2's prompt and completion once with the other label (1 pair held both ways: 2 rows). A
    feedback log rating one answer many times reads as 3 repeats and 1 pair both ways, not as 20
    independent rows."""
    from kto.inspection.cli import main

    rows = chat_rows()
    flipped = {**rows[2], "label": not rows[2]["label"]}
    cache = make_cache(tmp_path, [*rows, rows[0], rows[0], rows[1], flipped], tiny_model_dir, "chat.jsonl")
    result = CliRunner().invoke(main, ["summary", str(cache), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["repeats"] == {"repeated_rows": 3, "both_label_pairs": 1, "both_label_rows": 2}
    text = CliRunner().invoke(main, ["summary", str(cache)]).output
    assert (
        "repeats      3 rows repeat an earlier row's prompt, completion and label (each weighs once more in the loss); "
        "1 prompt+completion pair is held with both labels (2 rows, pulling against each other)\n"
    ) in text
    # tiny_cache holds chat_rows() alone: no repeat.
    assert "repeats      none (no two rows hold the same prompt and completion tokens)\n" in CliRunner().invoke(main, ["summary", str(tiny_cache)]).output


def test_summary_warns_when_the_truncated_count_disagrees_with_the_manifest(tiny_cache):
    from kto.inspection.summary import render, summarize

    s = summarize(tiny_cache)
    assert "disagree with manifest.json" not in render(s)
    s["manifest_counts"]["truncated"] += 3
    assert "warning      the rows disagree with manifest.json's counts; run kto-inspect verify" in render(s)
