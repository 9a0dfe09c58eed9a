"""kto-inspect verify agrees with kto-precompute on every cache precompute writes, whatever the
truncation (issue 18): a KL completion is its source's whole completion cut behind this row's
prompt, so it may be longer than the source's stored one, which was cut behind the source's own
prompt. And a KL completion changed by one token, or cut to another length, is still caught."""

import shutil

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from click.testing import CliRunner
from conftest import rewrite_shard as edit_shard
from conftest import write_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kto.formats import schema as S
from kto.formats.manifest import read_manifest
from kto.inspection.verify import verify
from kto.precompute.cli import main as precompute

WORDS = "the cat sat on a mat while seven quick brown foxes jumped over lazy dogs near old river banks".split()


def text(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def precompute_cache(root, rows, model, max_length: int, max_prompt_length: int):
    data = write_rows(root / "data.jsonl", rows)
    out = root / "cache"
    args = ["--data", str(data), "--model", str(model), "--out", str(out), "--max-length", str(max_length), "--max-prompt-length", str(max_prompt_length)]
    result = CliRunner().invoke(precompute, [*args, "--rows-per-shard", "3", "--batch-tokens", "512"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def problems(cache) -> list[str]:
    return [p for report in verify(cache, check_tokenizer=False) for p in report.problems]


def shard_rows(cache) -> list[dict]:
    m = read_manifest(cache)
    return [
        dict(r, shard=k, row=i) for k, s in enumerate(m.shards) for i, r in enumerate(ipc.open_file(pa.memory_map(str(cache / s.name))).read_all().to_pylist())
    ]


def test_a_kl_completion_longer_than_its_source_stored_completion_verifies(tmp_path, tiny_model_dir):
    """Row `long`: a 60-word text prompt and a 40-word completion, max_length 48: its prompt is
    cut to max_prompt_length 24 and its completion stored cut to 48 − 24 = 24 tokens. Row
    `short` (prompt and completion a few tokens) takes `long`'s whole completion as its KL
    completion, cut to 48 − its own prompt: longer than the 24 `long` stores. verify accepts
    it (it reported 'not the start of' before), and catches the first KL token changed."""
    rows = [
        {"id": "long", "prompt": text(60, 1) + "?", "completion": " " + text(40, 2), "label": True},
        {"id": "short", "prompt": "Hi?", "completion": " Yes.", "label": False},
        {"id": "mid", "prompt": "Say more?", "completion": " " + text(6, 3), "label": True},
    ]
    cache = precompute_cache(tmp_path, rows, tiny_model_dir, 48, 24)
    by_id = {r["id"]: r for r in shard_rows(cache)}
    assert len(by_id["long"]["prompt_ids"]) == 24 and len(by_id["long"]["completion_ids"]) == 24
    borrowers = [r for r in by_id.values() if r["kl_source_id"] == "long"]
    assert len(borrowers[0]["kl_completion_ids"]) > 24  # longer than the source's stored completion
    assert problems(cache) == []
    row = borrowers[0]

    def flip_first(d):
        d[S.KL_COMPLETION_IDS][row["row"]][0] = (d[S.KL_COMPLETION_IDS][row["row"]][0] + 1) % 49152

    edit_shard(cache, row["shard"], flip_first)
    assert any(f"(id {row['id']!r}): 'long''s completion_ids are not the start of kl_completion_ids" in p for p in problems(cache))


def test_a_kl_completion_past_the_room_behind_its_prompt_is_caught(tmp_path, tiny_model_dir):
    """A borrower of `long` (whose stored completion was cut, so its KL completion may be anything
    from the 24 stored to the room behind its own prompt) given one token past that room, its
    per-token terms and the manifest's counts made to agree: a KL sequence over max_length. A
    mutation hunt found the `n > room` bound could be dropped with every test green."""
    import json

    rows = [
        {"id": "long", "prompt": text(60, 1) + "?", "completion": " " + text(40, 2), "label": True},
        {"id": "short", "prompt": "Hi?", "completion": " Yes.", "label": False},
        {"id": "mid", "prompt": "Say more?", "completion": " " + text(6, 3), "label": True},
    ]
    cache = precompute_cache(tmp_path, rows, tiny_model_dir, 48, 24)
    row = next(r for r in shard_rows(cache) if r["kl_source_id"] == "long")
    room = 48 - len(row["prompt_ids"])
    extra = room + 1 - len(row["kl_completion_ids"])
    assert extra > 0

    def lengthen(d):
        d[S.KL_COMPLETION_IDS][row["row"]] = d[S.KL_COMPLETION_IDS][row["row"]] + [17] * extra
        d[S.REF_KL_TOKEN_LOGPS][row["row"]] = d[S.REF_KL_TOKEN_LOGPS][row["row"]] + [0.0] * extra  # the sum still holds

    edit_shard(cache, row["shard"], lengthen)
    manifest = json.loads((cache / "manifest.json").read_text())
    for key in ("kl_completion_tokens", "represented_tokens", "scored_tokens"):
        manifest["counts"][key] += extra
    (cache / "manifest.json").write_text(json.dumps(manifest))
    found = problems(cache)
    assert any(f"(id {row['id']!r}): {room + 1} kl_completion_ids, the rule keeps 24 to {room} of 'long''s completion (24 stored)" in p for p in found), found


def test_a_kl_completion_cut_shorter_than_the_rule_keeps_is_caught(tiny_cache, tmp_path):
    """tiny_cache's rows all fit max_length 64 whole: each KL completion must be its source's
    whole completion. One token dropped from its end is a prefix still, but the wrong length."""
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    first = shard_rows(cache)[0]
    n = len(first["kl_completion_ids"])

    def drop_last(d):
        d[S.KL_COMPLETION_IDS][0] = d[S.KL_COMPLETION_IDS][0][:-1]
        d[S.REF_KL_TOKEN_LOGPS][0] = d[S.REF_KL_TOKEN_LOGPS][0][:-1]

    edit_shard(cache, 0, drop_last)
    expected = f"(id {first['id']!r}): {n - 1} kl_completion_ids, the rule keeps {n} of {first['kl_source_id']!r}'s completion ({n} stored)"
    assert any(expected in p for p in problems(cache)), problems(cache)


def test_a_main_sequence_over_max_length_is_caught(tiny_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    first = shard_rows(cache)[0]

    def lengthen(d):
        d[S.PROMPT_IDS][0] = d[S.PROMPT_IDS][0] * 3

    edit_shard(cache, 0, lengthen)
    total = 3 * len(first["prompt_ids"]) + len(first["completion_ids"])
    assert any(f"(id {first['id']!r}): prompt + completion is {total} tokens, over max_length 64" in p for p in problems(cache))


@st.composite
def datasets(draw):
    """3-7 rows, text or conversations of 1-3 turns, of random lengths, and random limits."""
    rows = []
    for i in range(draw(st.integers(3, 7))):
        words = lambda: draw(st.integers(1, 40))
        if draw(st.booleans()):
            prompt = text(words(), i) + "?"
            completion = " " + text(words(), i + 1)
        else:
            prompt = []
            for t in range(draw(st.integers(1, 3))):
                prompt.append({"role": "user", "content": text(words(), i + t)})
                prompt.append({"role": "assistant", "content": text(words(), i + t + 2)})
            prompt[-1] = {"role": "user", "content": text(words(), i + 5)}
            completion = [{"role": "assistant", "content": text(words(), i + 7)}]
        rows.append({"id": f"r{i}", "prompt": prompt, "completion": completion, "label": i % 2 == 0})
    max_length = draw(st.integers(16, 96))
    return rows, max_length, draw(st.integers(4, max_length - 1))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datasets())
def test_every_cache_precompute_writes_verifies_and_a_changed_kl_token_is_caught(tmp_path_factory, tiny_model_dir, case):
    """Random rows and limits → kto-precompute → verify reports nothing; the first token of a
    KL completion changed (the part verify can compare: the source stores its completion only
    up to its own cut) is reported."""
    rows, max_length, max_prompt_length = case
    root = tmp_path_factory.mktemp("prop")
    cache = precompute_cache(root, rows, tiny_model_dir, max_length, max_prompt_length)
    assert problems(cache) == []
    victim = shard_rows(cache)[-1]

    def flip_first(d):
        d[S.KL_COMPLETION_IDS][victim["row"]][0] = (d[S.KL_COMPLETION_IDS][victim["row"]][0] + 1) % 49152

    edit_shard(cache, victim["shard"], flip_first)
    assert any(f"(id {victim['id']!r})" in p and "kl_completion_ids" in p for p in problems(cache))
