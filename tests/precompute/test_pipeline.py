"""kto-precompute end to end on a tiny random Llama with SmolLM2's tokenizer."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import torch
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, text_rows, write_rows

from kto.formats import schema as S
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main


def run_cli(*args):
    return CliRunner().invoke(main, list(args))


def read_cache(out: Path) -> pa.Table:
    tables = [ipc.open_file(pa.memory_map(str(p))).read_all() for p in sorted(out.glob(S.SHARD_GLOB))]
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])


def test_reference_logps_equal_a_float64_recomputation(tiny_cache, tiny_model_dir):
    """Per token and per sequence, main and KL sequences, within 1e-5."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    rows = read_cache(tiny_cache).to_pylist()
    assert len(rows) == 16
    for row in rows:
        for comp, tokens, total in (
            ("completion_ids", "ref_token_logps", "ref_logp"),
            ("kl_completion_ids", "ref_kl_token_logps", "ref_kl_logp"),
        ):
            ids = torch.tensor([row["prompt_ids"] + row[comp]])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
            p = len(row["prompt_ids"])
            expected = logp[p - 1 :, :].gather(1, ids[0, p:, None])[:, 0].numpy()
            np.testing.assert_allclose(row[tokens], expected, atol=1e-5, rtol=0)
            assert row[total] == pytest.approx(expected.sum(), abs=1e-4)


def test_kl_pairs_point_at_another_rows_completion(tiny_cache):
    rows = {r["id"]: r for r in read_cache(tiny_cache).to_pylist()}
    for row in rows.values():
        partner = rows[row["kl_source_id"]]
        assert row["kl_source_id"] != row["id"]
        assert partner["completion_ids"][: len(row["kl_completion_ids"])] == row["kl_completion_ids"]
        assert len(row["prompt_ids"]) + len(row["kl_completion_ids"]) <= 64


def test_manifest_counts_and_polars(tiny_cache):
    import polars as pl

    m = read_manifest(tiny_cache)
    assert (m.counts.rows, m.counts.desirable, m.counts.undesirable) == (16, 8, 8)
    assert [s.rows for s in m.shards] == [5, 5, 5, 1]
    df = pl.scan_ipc(str(tiny_cache / "*.arrow")).collect()
    assert df.height == 16 and df["label"].sum() == 8
    assert (tiny_cache / S.TOKENIZER_DIR / "tokenizer.json").is_file()
    assert m.content.max_length == 64 and "num_processes" in m.layout


def test_text_rows_decode_back_to_source(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    data = write_rows(tmp_path / "t.jsonl", text_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out, "--max-length", "128")).exit_code == 0
    tok = AutoTokenizer.from_pretrained(out / S.TOKENIZER_DIR)
    rows = read_cache(out).to_pylist()  # stored in KL-cycle order: find each row's source by id
    for row in rows:
        src = text_rows()[int(row["id"].rsplit(":", 1)[1]) - 1]
        assert tok.decode(row["prompt_ids"]) == src["prompt"]
        assert tok.decode(row["completion_ids"][:-1]) == src["completion"]
        assert row["label"] == src["label"]


def test_crash_then_rerun_gives_identical_bytes(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(*precompute_args(data, tiny_model_dir, a)).exit_code == 0
    assert run_cli(*precompute_args(data, tiny_model_dir, b)).exit_code == 0
    # Simulate a crash after two shards: no manifest, a missing shard, a leftover temp file.
    (b / S.MANIFEST_NAME).unlink()
    (b / "shard-00002.arrow").unlink()
    (b / ".shard-00003.arrow.tmp-999-1").write_bytes(b"partial")  # .NAME.tmp-PID-THREAD
    before = (b / "shard-00000.arrow").stat().st_mtime_ns
    result = run_cli(*precompute_args(data, tiny_model_dir, b))
    assert result.exit_code == 0, result.output
    assert (b / "shard-00000.arrow").stat().st_mtime_ns == before  # finished shards were skipped
    for name in sorted(p.name for p in a.glob(S.SHARD_GLOB)) + [S.MANIFEST_NAME]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_batch_tokens_default_is_the_devices_and_a_rerun_keeps_the_caches(tmp_path, tiny_model_dir):
    """Left out, --batch-tokens is 2048 on CPU (16384 on a GPU); a rerun into an unfinished cache
    scored at another budget resumes at that budget (it decides shard bytes) instead of being
    refused as another layout, and --overwrite starts again at the device's."""
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    a, b = tmp_path / "a", tmp_path / "b"

    def without_budget(out: Path, *extra: str) -> list[str]:
        args = precompute_args(data, tiny_model_dir, out, *extra)
        at = args.index("--batch-tokens")
        return args[:at] + args[at + 2 :]

    assert run_cli(*without_budget(a)).exit_code == 0
    assert read_manifest(a).layout["batch_tokens"] == 2048
    assert run_cli(*precompute_args(data, tiny_model_dir, b)).exit_code == 0  # --batch-tokens 256
    reference = {p.name: p.read_bytes() for p in b.glob(S.SHARD_GLOB)}
    (b / S.MANIFEST_NAME).unlink()  # killed after its shards, before the manifest
    (b / "shard-00002.arrow").unlink()
    resumed = run_cli(*without_budget(b))
    assert resumed.exit_code == 0, resumed.output
    assert read_manifest(b).layout["batch_tokens"] == 256
    assert {p.name: p.read_bytes() for p in b.glob(S.SHARD_GLOB)} == reference
    assert run_cli(*without_budget(b, "--overwrite")).exit_code == 0
    assert read_manifest(b).layout["batch_tokens"] == 2048


def test_different_configuration_is_refused_then_overwritten(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out)).exit_code == 0
    refused = run_cli(*precompute_args(data, tiny_model_dir, out, "--seed", "1"))
    assert refused.exit_code == 2 and "--out" in refused.output and "--overwrite" in refused.output
    assert read_manifest(out).content.seed == 0  # untouched
    ok = run_cli(*precompute_args(data, tiny_model_dir, out, "--seed", "1", "--overwrite"))
    assert ok.exit_code == 0 and read_manifest(out).content.seed == 1


def test_eval_split_has_its_own_cache_and_pairs(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out, "--eval-fraction", "0.25")).exit_code == 0
    train, evals = read_cache(out).to_pylist(), read_cache(out / S.EVAL_DIR).to_pylist()
    assert (len(train), len(evals)) == (12, 4)
    eval_ids = {r["id"] for r in evals}
    assert not eval_ids & {r["id"] for r in train}
    assert all(r["kl_source_id"] in eval_ids for r in evals)
    assert read_manifest(out / S.EVAL_DIR).content.split == "eval"


def test_all_one_class_warns(tmp_path, tiny_model_dir):
    rows = [r for r in chat_rows() if r["label"]]
    data = write_rows(tmp_path / "d.jsonl", rows)
    result = run_cli(*precompute_args(data, tiny_model_dir, tmp_path / "c"))
    assert result.exit_code == 0 and "all desirable" in result.output


def test_empty_completion_after_tokenization_is_dropped_and_counted(tmp_path, tiny_model_dir):
    import numpy as np

    from kto.precompute.plan import Truncation
    from kto.precompute.tokenize import keep_end, prompt_must_be_cut

    # A prompt that fills max_length leaves no room, but prompts are capped at max_prompt_length,
    # so a completion always keeps at least max_length - max_prompt_length tokens.
    rule = Truncation(max_length=10, max_prompt_length=9)
    assert prompt_must_be_cut(rule, 40, 2)
    cut = rule.apply(keep_end(rule, np.arange(40)), np.array([7, 8]), np.array([7, 8]))
    assert len(cut.prompt_ids) == 9 and cut.completion_ids.tolist() == [7]


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d, m, o: ["--data", str(d), "--model", str(m.parent / "nope"), "--out", str(o)], "--model"),
        (lambda d, m, o: ["--data", str(d), "--model", str(m), "--out", str(d)], "--out"),
        (lambda d, m, o: ["--data", str(d), "--model", str(m), "--out", str(o), "--max-prompt-length", "2000"], "--max-prompt-length"),
    ],
    ids=["missing-model", "out-is-a-file", "bad-flag"],
)
def test_bad_flags_get_one_line_and_write_nothing(tmp_path, tiny_model_dir, mutate, expect):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "out"
    result = run_cli(*mutate(data, tiny_model_dir, out))
    assert result.exit_code == 2
    assert expect in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_model_that_cannot_load(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a model")
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    result = run_cli(*precompute_args(data, broken, tmp_path / "out"))
    assert result.exit_code == 2 and "cannot load model" in result.output
    assert not list((tmp_path / "out").glob(S.SHARD_GLOB))


def test_fewer_than_two_rows(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "one.jsonl", chat_rows()[:1])
    result = run_cli(*precompute_args(data, tiny_model_dir, tmp_path / "out"))
    assert result.exit_code == 2 and "one.jsonl" in result.output and "at least 2" in result.output


def test_no_token_logps_keeps_sums_only(tmp_path, tiny_model_dir, tiny_cache):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"
    assert run_cli(*precompute_args(data, tiny_model_dir, out, "--no-token-logps")).exit_code == 0
    lean, full = read_cache(out), read_cache(tiny_cache)
    assert lean.column("ref_token_logps").null_count == lean.num_rows
    np.testing.assert_array_equal(lean.column("ref_logp").to_numpy(), full.column("ref_logp").to_numpy())
    assert read_manifest(out).fingerprint != read_manifest(tiny_cache).fingerprint


def test_paired_parquet_and_llama_factory_rows_go_end_to_end(tmp_path, tiny_model_dir):
    import pyarrow.parquet as pq

    paired = pa.table(
        {
            "prompt": ["Name a colour.", "Name a fruit."],
            "chosen": [" Blue.", " Apple."],
            "rejected": [" Seven.", " Chair."],
        }
    )
    pq.write_table(paired, tmp_path / "pairs.parquet")
    factory = write_rows(
        tmp_path / "lf.jsonl",
        [
            {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}], "kto_tag": True},
            {"messages": [{"role": "user", "content": "Say bye."}, {"role": "assistant", "content": "No."}], "kto_tag": False},
        ],
    )
    out = tmp_path / "c"
    result = run_cli("--data", str(tmp_path / "pairs.parquet"), "--data", str(factory), "--model", str(tiny_model_dir), "--out", str(out), "--max-length", "64")
    assert result.exit_code == 0, result.output
    rows = read_cache(out).to_pylist()
    assert sorted((r["id"], r["label"]) for r in rows) == sorted(
        [
            ("pairs.parquet:1:chosen", True),
            ("pairs.parquet:1:rejected", False),
            ("pairs.parquet:2:chosen", True),
            ("pairs.parquet:2:rejected", False),
            ("lf.jsonl:1", True),
            ("lf.jsonl:2", False),
        ]
    )
    # Partners never share the prompt when another prompt exists.
    prompts = {r["id"]: r["prompt_ids"] for r in rows}
    assert all(prompts[r["kl_source_id"]] != r["prompt_ids"] for r in rows)


def test_model_identity_tells_two_checkpoints_of_one_architecture_apart(tmp_path, tokenizer_dir, tiny_model_dir):
    """Same config and safetensors header, different weights: a fine-tune is not the reference."""
    from conftest import make_tiny_llama

    from kto.formats.compute.identity import model_identity
    from kto.formats.compute.sources import resolve_source

    other = make_tiny_llama(tmp_path / "other", tokenizer_dir, seed=5)
    a, b = model_identity(resolve_source(str(tiny_model_dir))), model_identity(resolve_source(str(other)))
    assert a["config"] == b["config"]
    wa, wb = a["weights"]["model.safetensors"], b["weights"]["model.safetensors"]
    assert wa["header_sha256"] == wb["header_sha256"] and wa["sampled_sha256"] != wb["sampled_sha256"]
    moved = tmp_path / "moved"
    shutil.copytree(tiny_model_dir, moved)
    assert model_identity(resolve_source(str(moved))) == a  # moving a model changes nothing


def test_model_identity_sees_rows_edited_inside_a_large_tensor(tmp_path):
    """Seen in a hunt: one embedding row edited in place (a fine-tune that trained a few token
    embeddings, merged) lay between the 64 sampled blocks of a tensor too large to hash whole,
    so a cache scored with the old row passed for the new model's. The whole file's sha256
    tells them apart; an identity recorded before it existed still matches what it can tell."""
    import torch
    from safetensors.torch import save_file

    from kto.formats.compute.identity import model_identity
    from kto.formats.compute.sources import ModelSource
    from kto.formats.manifest import same_model

    embed = torch.zeros(4096, 1024)  # 16 MiB: 64 blocks of 64 KiB cover a quarter of it
    edited = embed.clone()
    edited[2067] += 0.15  # bytes 8268-8272 KiB of the data: between sampled blocks 31 and 32 (asserted below)
    for name, weight in (("a", embed), ("b", edited)):
        (tmp_path / name).mkdir()
        save_file({"embed_tokens.weight": weight}, str(tmp_path / name / "model.safetensors"))
    ia, ib = (model_identity(ModelSource(tmp_path / n)) for n in "ab")
    fa, fb = ia["weights"]["model.safetensors"], ib["weights"]["model.safetensors"]
    assert {k: v for k, v in fa.items() if k != "sha256"} == {k: v for k, v in fb.items() if k != "sha256"}
    assert fa["sha256"] != fb["sha256"] and not same_model(ia, ib)
    before = {**ia, "weights": {"model.safetensors": {k: v for k, v in fa.items() if k != "sha256"}}}
    assert same_model(before, ia) and same_model(ib, before)  # what an old record could tell


def test_model_identity_sees_a_norm_edited_in_place(tmp_path):
    """Seen in an attack on a killed kto-precompute: one RMSNorm weight changed in place lay
    outside the 64 sampled blocks, the identity stayed, and the rerun kept the shards scored
    with the old weights. Tensors up to 1 MiB are hashed whole now. An identity recorded before
    that key existed still matches (caches and run records made earlier stay valid); another
    sampled hash does not."""
    import torch
    from safetensors.torch import save_file

    from kto.formats.compute.identity import model_identity
    from kto.formats.compute.sources import ModelSource
    from kto.formats.manifest import fingerprint_of, same_model

    big = torch.zeros(10 * 1024 * 1024 // 4)
    for name, norm in (("a", torch.ones(32)), ("b", torch.ones(32).index_fill_(0, torch.tensor([7]), 1.5))):
        (tmp_path / name).mkdir()
        save_file({"a.big": big, "b.norm": norm, "c.big": big.clone()}, str(tmp_path / name / "model.safetensors"))
    ia, ib = (model_identity(ModelSource(tmp_path / n)) for n in "ab")
    fa, fb = ia["weights"]["model.safetensors"], ib["weights"]["model.safetensors"]
    assert {k: fa[k] for k in ("size", "header_sha256", "sampled_sha256")} == {k: fb[k] for k in ("size", "header_sha256", "sampled_sha256")}
    assert fa["small_tensors_sha256"] != fb["small_tensors_sha256"] and not same_model(ia, ib)
    before = {**ia, "weights": {"model.safetensors": {k: v for k, v in fa.items() if k not in ("small_tensors_sha256", "sha256")}}}
    assert same_model(before, ia) and same_model(ia, before) and same_model(before, ib)  # what an old record could tell
    other = {**ia, "weights": {"model.safetensors": {**fa, "sampled_sha256": "0" * 64}}}
    assert not same_model(before, other) and not same_model(ia, {**ia, "config": "x"})
    # kto-precompute's rerun into a cache made before says so, not "differs in model".
    from kto.precompute.output import _difference

    said = _difference({"model": before, "inputs": []}, {}, {"model": ia, "inputs": []}, {}, "the cache")
    assert said.endswith("(differs in the model identity's format: an earlier kto made it, the weights may be the same)")
    said = _difference({"model": before, "inputs": []}, {}, {"model": other, "inputs": []}, {}, "the cache")
    assert said.endswith(
        f"(differs in model.weights (identity {fingerprint_of(before['weights'])[:12]}… there, identity {fingerprint_of(other['weights'])[:12]}… now))"
    ), said
    # A hub id there and a local copy of its files now: one model (same_model), but no earlier format.
    said = _difference({"model": {**ia, "hub_revision": "a" * 40}, "inputs": []}, {}, {"model": ia, "inputs": []}, {}, "the cache")
    assert said.endswith(f"(differs in model.hub_revision ({'a' * 12}… there, (absent) now))"), said


def test_a_cache_of_its_own_inside_out_eval_is_the_users_and_survives_overwrite(tmp_path, tiny_model_dir):
    """Seen in an attack: a held-out cache built into OUT/eval by its own kto-precompute run (from
    another file) was taken for OUT's eval split, and `--overwrite` of OUT deleted it. Only a
    folder recording the split "eval" is OUT's; this one is refused, never deleted."""
    chat, text = write_rows(tmp_path / "chat.jsonl", chat_rows()), write_rows(tmp_path / "text.jsonl", text_rows())
    out = tmp_path / "c"
    # Built first: into an existing cache's eval/ it is refused outright (next test).
    assert run_cli(*precompute_args(text, tiny_model_dir, out / "eval")).exit_code == 0
    held_out = {p.name: p.read_bytes() for p in (out / "eval").iterdir() if p.is_file()}
    for extra in (["--seed", "1", "--overwrite"], []):
        refused = run_cli(*precompute_args(chat, tiny_model_dir, out, *extra))
        assert refused.exit_code == 2 and "eval" in refused.output.strip().splitlines()[-1], refused.output
        assert {p.name: p.read_bytes() for p in (out / "eval").iterdir() if p.is_file()} == held_out
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("sub", ["eval", "sub", "tokenizer/sub", "run/sub"])
def test_out_inside_a_cache_or_a_run_is_refused_before_anything_is_written(tmp_path, tiny_model_dir, sub):
    """Seen in an attack: `--out CACHE/eval --overwrite` replaced CACHE's eval split with a whole
    other cache (verify then found eval ids in the train split); CACHE/sub and CACHE/tokenizer/sub
    were written too. A cache inside a kto-train run would be deleted by its --resume."""
    from kto.formats.runrecord import write_run_config

    chat = write_rows(tmp_path / "chat.jsonl", chat_rows())
    cache = tmp_path / "c"
    assert run_cli(*precompute_args(chat, tiny_model_dir, cache, "--eval-fraction", "0.2")).exit_code == 0
    (tmp_path / "run").mkdir()
    write_run_config(tmp_path / "run", {}, {})
    out = tmp_path / sub if sub.startswith("run/") else cache / sub
    before = {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    refused = run_cli(*precompute_args(chat, tiny_model_dir, out, "--seed", "3", "--overwrite"))
    holder = f"the kto-train run {tmp_path / 'run'}" if sub.startswith("run/") else f"the kto-precompute cache {cache}"
    assert refused.exit_code == 2 and f"--out {out}: inside {holder}" in refused.output.strip().splitlines()[-1], refused.output
    assert {str(p): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
