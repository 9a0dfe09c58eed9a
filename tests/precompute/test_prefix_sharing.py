"""kto-precompute with and without prefix sharing: same numbers, recorded layout, counts, no mixing."""

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, write_rows
from numerics_bounds import assert_sums_agree, assert_tokens_agree
from test_pipeline import read_cache

from kto.formats import schema as S
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main


def run_cli(*args):
    return CliRunner().invoke(main, list(args))


def paired_rows() -> list[dict]:
    """Chosen/rejected pairs sharing a prompt, with a system prompt every row repeats."""
    system = {"role": "system", "content": "You answer in one short, correct sentence. " * 3}
    out = []
    for r in chat_rows():
        out.append({**r, "prompt": [system, *r["prompt"]]})
    return out


@pytest.mark.numerics
def test_shared_and_plain_caches_agree_and_record_their_layout(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "paired.jsonl", paired_rows())
    shared, plain = tmp_path / "shared", tmp_path / "plain"
    args = ("--max-length", "128", "--rows-per-shard", "8")
    first = run_cli(*precompute_args(data, tiny_model_dir, shared, *args))
    assert first.exit_code == 0, first.output
    assert run_cli(*precompute_args(data, tiny_model_dir, plain, *args, "--no-prefix-sharing")).exit_code == 0
    a, b = read_cache(shared).to_pylist(), read_cache(plain).to_pylist()
    assert [r["id"] for r in a] == [r["id"] for r in b]
    # Other batch shapes: equal to fp32 rounding (tests/numerics_bounds.py), bit for bit only on
    # some CPUs.
    for tokens, total in (("ref_token_logps", "ref_logp"), ("ref_kl_token_logps", "ref_kl_logp")):
        terms = [np.asarray(y[tokens]) for y in b]
        assert_tokens_agree([np.asarray(x[tokens]) for x in a], terms, what=f"shared vs plain cache, {tokens}")
        assert_sums_agree([x[total] for x in a], [y[total] for y in b], terms)
    ms, mp = read_manifest(shared), read_manifest(plain)
    # Layout, not content: both caches serve the same training runs.
    assert ms.fingerprint == mp.fingerprint
    assert ms.layout["prefix_sharing"] is True and mp.layout["prefix_sharing"] is False
    # 16 rows in 2 shards of 8; every question's good and bad row sit in one shard, so each
    # shard runs 4 prompts once for 16 sequences: 12 prompts' worth of tokens saved per shard.
    prompts = {tuple(r["prompt_ids"]) for r in a}
    assert len(prompts) == 8
    c = ms.counts
    assert c.represented_tokens == 2 * c.prompt_tokens + c.completion_tokens + c.kl_completion_tokens
    assert c.prefix_tokens_saved == sum(3 * len(p) for p in prompts)
    assert c.scored_tokens == c.represented_tokens - c.prefix_tokens_saved
    assert mp.counts.scored_tokens == mp.counts.represented_tokens and mp.counts.prefix_tokens_saved == 0
    assert f"{c.scored_tokens} tokens scored ({c.prefix_tokens_saved} saved by prefix sharing" in first.output


def test_resume_refuses_to_mix_the_two_layouts(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    # A crash after some shards, then a rerun the other way: refused, nothing touched.
    (out / S.MANIFEST_NAME).unlink()
    (out / "shard-00003.arrow").unlink()
    before = {p.name: p.read_bytes() for p in out.glob(S.SHARD_GLOB)}
    refused = run_cli(*precompute_args(data, tiny_model_dir, out, "--no-prefix-sharing"))
    assert refused.exit_code == 2 and "different configuration" in refused.output and "--overwrite" in refused.output
    assert {p.name: p.read_bytes() for p in out.glob(S.SHARD_GLOB)} == before
    # The same way resumes.
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    assert read_manifest(out).layout["prefix_sharing"] is True


def test_a_finished_cache_of_the_other_layout_is_called_a_cache_not_an_unfinished_run(tmp_path, tiny_model_dir):
    """A finished cache keeps its journal; the refusal named it "the unfinished run" (and
    `kto-inspect verify` calls the same folder complete)."""
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    refused = run_cli(*precompute_args(data, tiny_model_dir, out, "--no-prefix-sharing"))
    assert refused.exit_code == 2
    assert "holds the cache of a different configuration (differs in prefix_sharing (True there, False now))" in refused.output
    assert "unfinished" not in refused.output
