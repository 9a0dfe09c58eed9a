"""kto-inspect summary: every number checked against the input rows or the shards themselves."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from click.testing import CliRunner
from conftest import chat_rows

from kto.formats import schema as S
from kto.formats.manifest import read_manifest
from kto.inspection.cli import main


def read_cache(cache) -> pa.Table:
    m = read_manifest(cache)
    return pa.concat_tables([ipc.open_file(pa.memory_map(str(cache / s.name))).read_all().replace_schema_metadata(None) for s in m.shards])


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_summary_json_counts_equal_the_input(tiny_cache):
    result = invoke("summary", tiny_cache, "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    rows = chat_rows()
    assert s["counts"] == {"rows": len(rows), "desirable": sum(r["label"] for r in rows), "undesirable": sum(not r["label"] for r in rows)}
    manifest = read_manifest(tiny_cache)
    assert s["fingerprint"] == manifest.fingerprint
    assert s["dropped"] == manifest.counts.dropped == 0
    table = read_cache(tiny_cache)
    assert s["truncated"] == sum(table.column(S.TRUNCATED).to_pylist())
    assert s["shards"] == len(manifest.shards) == 4


def test_summary_lengths_and_logps_match_the_shards(tiny_cache):
    s = json.loads(invoke("summary", tiny_cache, "--json").stdout)
    t = read_cache(tiny_cache).to_pydict()
    for name, col in (("prompt", S.PROMPT_IDS), ("completion", S.COMPLETION_IDS), ("kl_completion", S.KL_COMPLETION_IDS)):
        lengths = np.array([len(x) for x in t[col]])
        stats = s["lengths"][name]
        assert (stats["count"], stats["min"], stats["max"]) == (len(lengths), lengths.min(), lengths.max())
        assert np.isclose(stats["mean"], lengths.mean()) and np.isclose(stats["p50"], np.median(lengths))
    for label, flag in (("desirable", True), ("undesirable", False)):
        pick = [i for i, x in enumerate(t[S.LABEL]) if x == flag]
        seq = np.array([t[S.REF_LOGP][i] for i in pick])
        tokens = np.concatenate([t[S.REF_TOKEN_LOGPS][i] for i in pick])
        per_token = np.array([t[S.REF_LOGP][i] / len(t[S.COMPLETION_IDS][i]) for i in pick])
        got = s["ref_logps"][label]
        assert got["sequence"]["count"] == len(pick)
        assert np.isclose(got["sequence"]["mean"], seq.mean()) and np.isclose(got["sequence"]["min"], seq.min())
        assert got["token"]["count"] == sum(len(t[S.COMPLETION_IDS][i]) for i in pick)
        assert np.isclose(got["token"]["p50"], np.quantile(tokens, 0.5), atol=1e-5)
        assert np.isclose(got["mean_per_token"]["max"], per_token.max())
        assert np.isclose(got["kl_sequence"]["mean"], np.mean([t[S.REF_KL_LOGP][i] for i in pick]))


def test_summary_text_is_readable(tiny_cache):
    result = invoke("summary", tiny_cache)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert read_manifest(tiny_cache).fingerprint in out
    assert "rows         16: 8 desirable (50.0%), 8 undesirable (50.0%)" in out
    for word in ("token lengths", "completion", "kl_completion", "desirable sequence", "undesirable token", "truncated", "dropped"):
        assert word in out
    # How prompts were cut is not in the shards: the manifest's counts (tiny_cache's rows all fit).
    assert "prompts cut  0: 0 by dropping earliest turns, 0 mid-text (manifest.json)" in out


def test_summary_prints_the_tokens_scored_and_saved(tiny_cache, tmp_path):
    """Both sequences of every row are represented (prompt + completion, prompt + KL completion);
    the reference scored all but the prompts prefix sharing ran once."""
    t = read_cache(tiny_cache).to_pydict()
    represented = sum(2 * len(p) + len(c) + len(k) for p, c, k in zip(t[S.PROMPT_IDS], t[S.COMPLETION_IDS], t[S.KL_COMPLETION_IDS]))
    counts = read_manifest(tiny_cache).counts
    assert counts.represented_tokens == represented and counts.prefix_tokens_saved > 0
    pct = f"{100 * counts.prefix_tokens_saved / represented:.1f}%"
    line = f"scored       {represented - counts.prefix_tokens_saved} of {represented} tokens; {counts.prefix_tokens_saved} ({pct}) saved by prefix sharing"
    assert line in invoke("summary", tiny_cache).stdout


def test_summary_errors(tmp_path):
    result = invoke("summary", tmp_path / "nope")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"kto-inspect: error: {tmp_path / 'nope'}: no such cache directory"
    result = invoke("summary", tmp_path)
    assert result.exit_code == 2 and "manifest.json: no manifest" in result.stderr


def test_cache_without_token_logps(tiny_cache, tmp_path):
    """A --no-token-logps cache: per-token stats are empty, rows says why, verify still passes."""
    import dataclasses
    import shutil

    from kto.formats.shards import FINGERPRINT_TAG, shard_metadata, write_shard

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    manifest = read_manifest(cache)
    content = dataclasses.replace(manifest.content, store_token_logps=False)
    entries = []
    for entry in manifest.shards:
        path = cache / entry.name
        table = ipc.open_file(pa.memory_map(str(path))).read_all()
        for col in (S.REF_TOKEN_LOGPS, S.REF_KL_TOKEN_LOGPS):
            table = table.set_column(table.schema.get_field_index(col), col, pa.nulls(table.num_rows, pa.list_(pa.float32())))
        tags = {**shard_metadata(path), FINGERPRINT_TAG: content.fingerprint}  # as precompute tags its shards
        entries.append(dataclasses.replace(entry, sha256=write_shard(path, table, tags)))
    dataclasses.replace(manifest, content=content, shards=entries).write(cache)

    s = json.loads(invoke("summary", cache, "--json").stdout)
    assert s["ref_logps"]["desirable"]["token"]["count"] == 0 and s["ref_logps"]["desirable"]["token"]["mean"] is None
    assert s["ref_logps"]["desirable"]["sequence"]["count"] == 8
    assert "were not stored" in invoke("summary", cache).stdout
    result = invoke("rows", cache, "--limit", "1")
    assert result.exit_code == 0 and "(no per-token log-probs" in result.stdout
    assert invoke("verify", cache).exit_code == 0


def test_summary_refuses_log_probs_that_are_not_finite(tiny_cache, tmp_path):
    """A NaN ref_logp (a shard rewritten, its sha256 patched) was averaged into `nan` in the
    tables, exit 0; every other reader refuses such a value."""
    import shutil

    from conftest import patch_shard_table

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    manifest = read_manifest(cache)
    table = ipc.open_file(pa.memory_map(str(cache / manifest.shards[1].name))).read_all()
    values = table.column(S.REF_KL_LOGP).to_pylist()
    values[0] = float("nan")
    column = pa.array(values, table.schema.field(S.REF_KL_LOGP).type)
    patch_shard_table(cache, 1, table.set_column(table.schema.get_field_index(S.REF_KL_LOGP), S.REF_KL_LOGP, column))
    result = invoke("summary", cache)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"kto-inspect: error: {cache}: 1 row with a ref_logp or ref_kl_logp that is not finite (NaN or ±inf); run kto-inspect verify, which names each"
    )
