"""kto-inspect rows: selection through SQL, text decoded with the cache's own tokenizer."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_cache, text_rows

import kto.formats
from kto.inspection.cli import main


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory, tiny_model_dir):
    """Plain-text rows (no chat template), so decoded text can be compared with the source."""
    return make_cache(tmp_path_factory.mktemp("text-cache"), text_rows(), tiny_model_dir, "text.jsonl")


def rows_json(cache, *args):
    result = CliRunner().invoke(main, ["rows", str(cache), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_decoded_text_equals_the_source(text_cache):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(text_cache / "tokenizer").eos_token
    source = {f"text.jsonl:{i}": r for i, r in enumerate(text_rows(), 1)}
    shown = rows_json(text_cache, "--limit", "100")
    assert len(shown) == len(source)
    for row in shown:
        src = source[row["id"]]
        assert row["prompt"] == src["prompt"]
        assert row["completion"] == src["completion"] + eos  # text completions end with EOS
        assert row["label"] == ("desirable" if src["label"] else "undesirable")
        partner = source[row["kl_source_id"]]
        assert row["kl_completion"] == partner["completion"] + eos
        assert "".join(t["text"] for t in row["tokens"]) == row["completion"]


@pytest.mark.parametrize("limit", ["99999999999", str(2**70)])
def test_a_limit_past_polars_row_count_shows_every_row(text_cache, limit):
    """`--limit 99999999999` was an OverflowError traceback (polars counts rows in 32 bits)."""
    shown = rows_json(text_cache, "--limit", limit, "--sort", "id")
    assert [r["id"] for r in shown] == sorted(f"text.jsonl:{i}" for i in range(1, len(text_rows()) + 1))


def test_where_sort_limit_match_polars(text_cache):
    import polars as pl

    df = kto.formats.scan(text_cache).collect()
    expected = df.filter(~pl.col("label")).with_columns(per_token=pl.col("ref_logp") / pl.col("completion_ids").list.len()).sort("per_token").head(3)
    shown = rows_json(text_cache, "--where", "NOT label", "--sort", "ref_logp_per_token", "--limit", "3")
    assert [r["id"] for r in shown] == expected["id"].to_list()
    assert [r["ref_logp"] for r in shown] == expected["ref_logp"].to_list()
    shown = rows_json(text_cache, "--where", "completion_len >= 10 AND id LIKE '%:1%'", "--sort", "completion_len DESC, id", "--limit", "50")
    lens = [r["completion_len"] for r in shown]
    assert lens == sorted(lens, reverse=True) and min(lens) >= 10
    assert all(":1" in r["id"] for r in shown)
    want = df.filter((pl.col("completion_ids").list.len() >= 10) & pl.col("id").str.contains(":1"))
    assert sorted(r["id"] for r in shown) == sorted(want["id"].to_list())


def test_least_likely_tokens_are_flagged(text_cache):
    (row,) = rows_json(text_cache, "--limit", "1", "--flag", "2")
    logps = np.array([t["ref_logp"] for t in row["tokens"]])
    flagged = [k for k, t in enumerate(row["tokens"]) if t["least_likely"]]
    assert sorted(flagged) == sorted(np.argsort(logps)[:2].tolist())
    df = kto.formats.scan(text_cache).head(1).collect()
    assert np.allclose(logps, df["ref_token_logps"][0].to_list())
    assert np.isclose(logps.sum(), row["ref_logp"], atol=1e-4)


def test_flag_zero_marks_no_token_and_prints_no_empty_line(text_cache):
    result = CliRunner().invoke(main, ["rows", str(text_cache), "--limit", "1", "--flag", "0"])
    assert result.exit_code == 0 and "*" not in result.stdout.split("least likely)")[-1]
    assert "least likely: " not in result.stdout  # printed empty before


def test_text_output(text_cache):
    result = CliRunner().invoke(main, ["rows", str(text_cache), "--limit", "2"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("── text.jsonl:") == 2
    # Rows are stored in KL-cycle order, not input order: look for the first question among all.
    out = CliRunner().invoke(main, ["rows", str(text_cache), "--limit", "100"]).stdout
    assert "'Question: What is the capital of France?\\nAnswer:'" in out
    assert "least likely: " in out and "*'" in out
    result = CliRunner().invoke(main, ["rows", str(text_cache), "--where", "completion_len > 1000"])
    assert result.exit_code == 0 and result.stdout.strip() == "no rows match"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--where", "nosuch > 1"], "--where 'nosuch > 1': 'nosuch' is not a column (columns: completion_ids, completion_len, id, "),
        (["--where", "label AND ("], "--where 'label AND (': not an SQL expression"),
        (["--where", "ref_logp"], "--where 'ref_logp': filter predicate must be of type `Boolean`"),
        (["--where", "__import__('os').system('true')"], "--where \"__import__('os').system('true')\""),
        (["--sort", "nosuch DESC"], "--sort 'nosuch DESC': 'nosuch' is not a column (columns: "),
        (["--limit", "0"], "--limit 0: must be at least 1"),
        (["--flag", "-1"], "--flag -1: must be 0 or more"),
    ],
)
def test_bad_flags_are_one_line_errors(text_cache, args, message):
    result = CliRunner().invoke(main, ["rows", str(text_cache), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"kto-inspect: error: {message}")
    assert result.stderr.count("\n") == 1


SECRET = "TOPSECRET-8c1f"


@pytest.mark.parametrize(
    "args",
    [
        ["--where", "id IN (SELECT nope FROM read_csv('{secret}'))"],  # the reported attack
        ["--where", "completion_len > (SELECT COUNT(*) FROM read_csv('{secret}'))"],
        ["--where", "id = (SELECT * FROM read_csv('{secret}'))"],
        ["--sort", "(SELECT nope FROM read_csv('{secret}')) DESC"],
        ["--where", "length(read_csv('{secret}')) > 0"],
        ["--where", "id IN (SELECT nope FROM read_parquet('{secret}'))"],
        ["--where", '"label" OR EXISTS (SELECT 1 FROM "{secret}")'],
    ],
)
def test_subquery_over_read_csv_cannot_read_or_echo_a_file(text_cache, tmp_path, args):
    """polars SQL resolves `read_csv(...)` in a subquery, and its "unable to find column"
    error listed the file's first line as the column names. Refused before polars sees it."""
    secret = tmp_path / "secret.txt"
    secret.write_text(f"password={SECRET}\nline two\n")
    args = [a.replace("{secret}", str(secret)) for a in args]
    result = CliRunner().invoke(main, ["rows", str(text_cache), *args])
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output
    assert result.stderr.startswith(f"kto-inspect: error: {args[0]} ") and result.stderr.count("\n") == 1
    assert "is not allowed" in result.stderr or "is not a column" in result.stderr


def test_whitelisted_functions_and_keywords_still_work(text_cache):
    import polars as pl

    df = kto.formats.scan(text_cache).collect()
    shown = rows_json(
        text_cache,
        "--where",
        "abs(ref_logp) > 1 AND starts_with(id, 'text') AND NOT truncated AND CAST(completion_len AS DOUBLE) BETWEEN 2 AND 1000",
        "--sort",
        "round(ref_logp, 3) DESC, id",
        "--limit",
        "100",
    )
    want = (
        df.filter((pl.col("ref_logp").abs() > 1) & ~pl.col("truncated")).with_columns(r=pl.col("ref_logp").round(3)).sort(["r", "id"], descending=[True, False])
    )
    assert [r["id"] for r in shown] == want["id"].to_list() and len(shown) > 0


def test_a_tokenizer_swapped_in_the_cache_is_refused(text_cache, tmp_path):
    """Seen in an attack: two tokens' ids swapped in CACHE/tokenizer/tokenizer.json and rows
    showed "What is a capital" for "the capital", without a word (verify caught it, rows did not)."""
    import shutil

    cache = shutil.copytree(text_cache, tmp_path / "cache")
    path = cache / "tokenizer" / "tokenizer.json"
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġthe"]
    path.write_text(json.dumps(tok))
    result = CliRunner().invoke(main, ["rows", str(cache), "--limit", "1"])
    assert result.exit_code == 2
    assert f"{cache / 'tokenizer'}: differs from the tokenizer the manifest records (pipeline, vocabulary)" in result.stderr, result.output
