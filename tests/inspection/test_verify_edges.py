"""kto-inspect verify at the edges of its checks: per-token terms one too few or too many, a term
off by 1e-2, a KL completion one token shorter than the rule keeps from a truncated source, a
main sequence exactly one token over max_length, a manifest KL token count off by one, an eval
split tokenized by another tokenizer, and the "… and N more" line of a check with many problems.
Each cache is damaged so that only the check under test can see it (sha256, fingerprint tag and
the manifest's other counts kept consistent)."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from click.testing import CliRunner
from conftest import precompute_args, rewrite_shard, text_rows, unverified_copy, write_rows

from kto.formats import schema as S
from kto.formats.manifest import read_manifest
from kto.inspection.cli import main
from kto.inspection.verify import MAX_PER_CHECK

WORDS = "the cat sat on a mat while seven quick brown foxes jumped over lazy dogs near old river banks".split()


def text(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def verify(path):
    return CliRunner().invoke(main, ["verify", str(path)])


def problem_lines(result) -> list[str]:
    """The problem lines verify printed, without the prefix and the closing count line."""
    lines = [line.removeprefix("kto-inspect: verify: ") for line in result.stderr.splitlines()]
    return [line for line in lines if " problem(s) found in " not in line]


def rows_of(cache, index: int) -> dict:
    return ipc.open_file(pa.memory_map(str(cache / read_manifest(cache).shards[index].name))).read_all().to_pydict()


def shift_counts(cache, **delta: int) -> None:
    """Change manifest counts (not fingerprinted content) and keep represented_tokens and
    scored_tokens adding up, so the manifest reader accepts it."""
    obj = json.loads((cache / S.MANIFEST_NAME).read_text())
    counts = obj["counts"]
    for k, d in delta.items():
        counts[k] += d
    tokens = 2 * delta.get("prompt_tokens", 0) + delta.get("completion_tokens", 0) + delta.get("kl_completion_tokens", 0)
    counts["represented_tokens"] += tokens
    counts["scored_tokens"] += tokens
    (cache / S.MANIFEST_NAME).write_text(json.dumps(obj))


@pytest.fixture
def cache(tiny_cache, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    return out


@pytest.mark.parametrize("change", [-1, +1], ids=["fewer", "more"])
def test_per_token_terms_not_one_per_completion_token_are_named(cache, change):
    """A row whose stored ref_token_logps are one fewer or one more than its completion_ids: the
    step-0 check pairs them token by token. The sum check leaves such rows to this one."""
    path = cache / "shard-00001.arrow"
    d = rows_of(cache, 1)
    n = len(d[S.COMPLETION_IDS][0])

    def edit(d):
        terms = d[S.REF_TOKEN_LOGPS][0]
        d[S.REF_TOKEN_LOGPS][0] = terms[:-1] if change < 0 else [*terms, 0.0]

    rewrite_shard(cache, 1, edit)
    result = verify(cache)
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [f"{path} row 1 (id {d[S.ID][0]!r}): {n + change} ref_token_logps for {n} completion_ids"]


def test_fewer_terms_than_tokens_are_refused_by_kto_train_at_read_time(tiny_cache, tiny_model_dir, tmp_path):
    """The shard is read when training reaches it: kto-train stops with one line naming the row."""
    from conftest import run_train, train_error_line

    cache = unverified_copy(tiny_cache, tmp_path / "cache")
    path = cache / "shard-00002.arrow"
    d = rows_of(cache, 2)
    n = len(d[S.KL_COMPLETION_IDS][3])
    rewrite_shard(cache, 2, lambda d: d[S.REF_KL_TOKEN_LOGPS].__setitem__(3, d[S.REF_KL_TOKEN_LOGPS][3][:-1]))
    result = run_train(cache, tiny_model_dir, tmp_path / "run", "--max-steps", "1")
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == (
        f"kto-train: error: {path} row 4 (id {d[S.ID][3]!r}): {n - 1} ref_kl_token_logps for {n} kl_completion_ids; kto-inspect verify {cache} checks the whole cache"
    )


def test_a_per_token_term_off_by_a_hundredth_of_a_nat_is_named(cache):
    """ref_logp is the float64 sum of these very float32 terms: only summation order may differ.
    One term moved by 1e-2 (ref_logp about -100) is damage, not rounding."""
    path = cache / "shard-00002.arrow"
    d = rows_of(cache, 2)

    def edit(d):
        d[S.REF_TOKEN_LOGPS][2][1] += 1e-2

    rewrite_shard(cache, 2, edit)
    result = verify(cache)
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result)
    assert line.startswith(f"{path} row 3 (id {d[S.ID][2]!r}): ref_token_logps sum to "), line
    assert line.endswith(f", ref_logp is {d[S.REF_LOGP][2]:.6g}")


def test_a_manifest_kl_token_count_off_by_one_is_named(cache):
    shift_counts(cache, kl_completion_tokens=1)  # represented and scored tokens still add up
    result = verify(cache)
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [f"{cache / S.MANIFEST_NAME}: counts.kl_completion_tokens is 167, the shards hold 166"]


def test_more_problems_than_shown_are_counted(cache):
    """12 stray shard files: MAX_PER_CHECK lines, then one line counting the rest."""
    strays = [cache / f"shard-{k:05d}.arrow" for k in range(10, 22)]
    for p in strays:
        p.write_bytes(b"")
    result = verify(cache)
    assert result.exit_code == 1, result.output
    assert MAX_PER_CHECK == 10
    assert problem_lines(result) == [
        *(f"{p}: shard file not listed in the manifest (a polars glob over the cache would read it)" for p in strays[:10]),
        "… and 2 more like the line above",
    ]
    assert f"FAILED: {cache}: 11 problem(s), listed on stderr" in result.stdout


@pytest.fixture(scope="module")
def truncated_cache(tmp_path_factory, tiny_model_dir):
    """max_length 48: `long`'s prompt cut to 24 tokens and its completion stored cut to 24, so
    prompt + completion is exactly max_length and its completion is not whole; the row that takes
    `long`'s whole completion as its KL completion has it cut behind its own (short) prompt."""
    root = tmp_path_factory.mktemp("truncated")
    rows = [
        {"id": "long", "prompt": text(60, 1) + "?", "completion": " " + text(40, 2), "label": True},
        {"id": "short", "prompt": "Hi?", "completion": " Yes.", "label": False},
        {"id": "mid", "prompt": "Say more?", "completion": " " + text(6, 3), "label": True},
    ]
    data = write_rows(root / "data.jsonl", rows)
    out = root / "cache"
    args = ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--max-length", "48", "--max-prompt-length", "24"]
    result = CliRunner().invoke(main_precompute(), [*args, "--rows-per-shard", "3", "--batch-tokens", "512"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert verify(out).exit_code == 0
    return out


def main_precompute():
    from kto.precompute.cli import main as precompute

    return precompute


def _row(cache, pick) -> tuple[int, int, dict]:
    """(shard, row, the row's values) of the first row `pick(values)` accepts."""
    for k in range(len(read_manifest(cache).shards)):
        d = rows_of(cache, k)
        for i in range(len(d[S.ID])):
            row = {c: v[i] for c, v in d.items()}
            if pick(row):
                return k, i, row
    raise AssertionError("no such row")


def test_a_kl_completion_cut_shorter_than_a_truncated_source_keeps_is_named(truncated_cache, tmp_path):
    """`long` stores 24 completion tokens (not whole): the KL completion of the row that borrows it must hold at least
    those 24. Cut to 23 it is still their start (the digest check passes) and still within its
    room: only the length rule catches it. Its ref_kl_logp is re-summed and the manifest's
    KL token count lowered, so nothing else does."""
    cache = tmp_path / "cache"
    shutil.copytree(truncated_cache, cache)
    k, i, borrower = _row(cache, lambda r: r[S.KL_SOURCE_ID] == "long")
    _, _, long = _row(cache, lambda r: r[S.ID] == "long")
    assert len(long[S.PROMPT_IDS]) + len(long[S.COMPLETION_IDS]) == 48 and len(long[S.COMPLETION_IDS]) == 24
    room, n = 48 - len(borrower[S.PROMPT_IDS]), len(borrower[S.KL_COMPLETION_IDS])
    assert n > 24

    def cut(d):
        d[S.KL_COMPLETION_IDS][i] = d[S.KL_COMPLETION_IDS][i][:23]
        d[S.REF_KL_TOKEN_LOGPS][i] = d[S.REF_KL_TOKEN_LOGPS][i][:23]
        d[S.REF_KL_LOGP][i] = float(np.sum(np.asarray(d[S.REF_KL_TOKEN_LOGPS][i], dtype=np.float32), dtype=np.float64))

    rewrite_shard(cache, k, cut)
    shift_counts(cache, kl_completion_tokens=23 - n)
    result = verify(cache)
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        f"{cache / f'shard-{k:05d}.arrow'} row {i + 1} (id {borrower[S.ID]!r}): 23 kl_completion_ids, the rule keeps 24 to {room} of 'long''s completion (24 stored) behind this row's prompt (max_length 48)"
    ]


def test_a_main_sequence_one_token_over_max_length_is_named(truncated_cache, tmp_path):
    """`long` fills max_length 48 exactly; one more prompt token makes it 49."""
    cache = tmp_path / "cache"
    shutil.copytree(truncated_cache, cache)
    k, i, long = _row(cache, lambda r: r[S.ID] == "long")

    def lengthen(d):
        d[S.PROMPT_IDS][i] = [*d[S.PROMPT_IDS][i], d[S.PROMPT_IDS][i][-1]]

    rewrite_shard(cache, k, lengthen)
    shift_counts(cache, prompt_tokens=1)
    result = verify(cache)
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [f"{cache / f'shard-{k:05d}.arrow'} row {i + 1} (id 'long'): prompt + completion is 49 tokens, over max_length 48"]


def test_an_eval_split_made_with_another_tokenizer_is_caught(tiny_model_dir, tmp_path):
    """The same model, its chat template edited: CACHE/eval replaced by the eval split of the same
    rows made with that tokenizer. kto-train --eval-cache refuses it; verify must say so."""
    other_model = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_model_dir, other_model)
    template = other_model / "chat_template.jinja"
    template.write_text(template.read_text() + "{# edited #}")
    data = write_rows(tmp_path / "rows.jsonl", text_rows())
    caches = []
    for name, model in (("mine", tiny_model_dir), ("other", other_model)):
        out = tmp_path / name
        result = CliRunner().invoke(main_precompute(), precompute_args(data, model, out, "--eval-fraction", "0.25"))
        assert result.exit_code == 0, result.output
        caches.append(out)
    mine, other = caches
    assert verify(other).exit_code == 0
    shutil.rmtree(mine / S.EVAL_DIR)
    shutil.copytree(other / S.EVAL_DIR, mine / S.EVAL_DIR)
    result = verify(mine)
    assert result.exit_code == 1, result.output
    assert problem_lines(result) == [
        f"{mine / S.EVAL_DIR}: made with another tokenizer than {mine} (tokenizer identity differs in: chat_template); kto-train --eval-cache refuses it"
    ]
