import numpy as np
import pytest
from transformers import AutoTokenizer

from kto.formats.errors import InputError
from kto.formats.examples import Example
from kto.precompute.pairing import cycle_order, kl_partners
from kto.precompute.tokenize import Truncation, leading_bos_id, tokenize_example


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def text_example(prompt, completion):
    return Example("x", prompt, completion, True, "t.jsonl: row 1")


def test_plain_text_splits_at_the_prompt_boundary_and_appends_eos(tok):
    row = tokenize_example(text_example("Question: 2+2?\nAnswer:", " 4"), tok)
    assert tok.decode(row.prompt_ids) == "Question: 2+2?\nAnswer:"
    assert row.completion_ids[-1] == tok.eos_token_id
    assert tok.decode(row.completion_ids[:-1]) == " 4"


def test_conversational_prompt_ends_with_generation_prompt(tok):
    ex = Example("c", ({"role": "user", "content": "hi"},), ({"role": "assistant", "content": "hello there"},), True, "c.jsonl: row 1")
    row = tokenize_example(ex, tok)
    assert tok.decode(row.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tok.decode(row.completion_ids) == "hello there<|im_end|>\n"
    assert not row.prefix_split


def cut(prompt, completion, kl, max_length=10, max_prompt_length=4, bos_id=None):
    """Truncation.apply, with the cut sequences as lists (for == against hand-worked lists)."""
    from types import SimpleNamespace

    c = Truncation(max_length, max_prompt_length, bos_id).apply(*(np.asarray(x, np.int32) for x in (prompt, completion, kl)))
    return SimpleNamespace(
        prompt_ids=c.prompt_ids.tolist(),
        completion_ids=c.completion_ids.tolist(),
        kl_completion_ids=c.kl_completion_ids.tolist(),
        prompt_cut=c.prompt_cut,
        completion_cut=c.completion_cut,
        kl_completion_cut=c.kl_completion_cut,
        truncated=c.truncated,
    )


def test_kept_lengths_for_many_rows_equal_what_apply_cuts():
    """The manifest's counts use the vectorized lengths; the shards use apply: they must agree."""
    rng = np.random.default_rng(0)
    rule = Truncation(max_length=64, max_prompt_length=20, bos_id=1)
    p, c, k = (rng.integers(1, 90, size=500) for _ in range(3))
    kept = rule.kept_lengths(p, c, k)
    for i in range(500):
        got = rule.apply(np.r_[1, np.arange(2, p[i] + 1)].astype(np.int32), np.arange(c[i], dtype=np.int32), np.arange(k[i], dtype=np.int32))
        assert (len(got.prompt_ids), len(got.completion_ids), len(got.kl_completion_ids)) == (kept[0][i], kept[1][i], kept[2][i])
        assert len(got.prompt_ids) + max(len(got.completion_ids), len(got.kl_completion_ids)) <= 64
        assert len(got.completion_ids) >= min(c[i], 64 - 20) and got.prompt_ids[0] == 1


def test_a_row_that_fits_is_not_cut_even_past_max_prompt_length():
    """Prompt 7 > max_prompt_length 4, but 7 + max(2, 3) = 10 ≤ max_length 10: nothing is cut
    (the old rule cut the prompt to 4 anyway)."""
    c = cut(list(range(7)), [100, 101], [200, 201, 202])
    assert (c.prompt_ids, c.completion_ids, c.kl_completion_ids) == (list(range(7)), [100, 101], [200, 201, 202])
    assert not (c.prompt_cut or c.completion_cut or c.kl_completion_cut or c.truncated)


def test_a_kl_partner_longer_than_the_own_completion_decides_the_cut():
    """Prompt 6, completion 2, KL completion 8, max_length 10: the main sequence (8) fits, the KL
    one (14) does not. The prompt is cut first, to max(max_prompt_length 4, 10 − 8 = 2) = 4
    (its end: [2, 3, 4, 5]); room = 10 − 4 = 6, so the KL completion keeps its first 6 and the
    own completion (2) is whole. The row counts as truncated: its prompt changed."""
    c = cut(list(range(6)), [100, 101], list(range(200, 208)))
    assert c.prompt_ids == [2, 3, 4, 5] and c.completion_ids == [100, 101] and c.kl_completion_ids == list(range(200, 206))
    assert c.prompt_cut and not c.completion_cut and c.kl_completion_cut and c.truncated
    # KL completion of 5: 6 + 5 = 11 > 10, prompt cut to max(4, 10 − 5) = 5 only, nothing else.
    c = cut(list(range(6)), [100, 101], list(range(200, 205)))
    assert c.prompt_ids == [1, 2, 3, 4, 5] and c.kl_completion_ids == list(range(200, 205)) and not c.kl_completion_cut


def test_a_prompt_longer_than_max_length():
    """Prompt 15, completion 3, KL 2, max_length 10: prompt cut to max(4, 10 − 3) = 7, its end
    [8 … 14]; room 3: both completions whole. With a completion of 20: prompt to
    max(4, 10 − 20) = 4, room 6, completion cut to its first 6."""
    c = cut(list(range(15)), [100, 101, 102], [200, 201])
    assert c.prompt_ids == list(range(8, 15)) and c.completion_ids == [100, 101, 102] and c.kl_completion_ids == [200, 201]
    assert c.prompt_cut and not c.completion_cut
    c = cut(list(range(15)), list(range(100, 120)), [200, 201])
    assert c.prompt_ids == [11, 12, 13, 14] and c.completion_ids == list(range(100, 106)) and c.completion_cut
    assert len(c.prompt_ids) + len(c.completion_ids) == 10


def test_truncation_reattaches_bos():
    """BOS 1 + 14 tokens, completion 3: keep 7 = BOS + the last 6."""
    c = cut([1] + list(range(20, 34)), [100, 101, 102], [200], bos_id=1)
    assert c.prompt_ids == [1, 28, 29, 30, 31, 32, 33]


def test_smollm2_does_not_add_bos(tok):
    assert leading_bos_id(tok) is None


def test_tokenize_cuts_nothing(tok):
    row = tokenize_example(text_example("word " * 200, " yes"), tok)
    assert len(row.prompt_ids) >= 200


def test_cycle_order_sorts_an_even_number_of_blocks_in_alternating_directions():
    """12 rows, blocks of at most 4: 2·⌈12/8⌉ = 4 blocks of 3, ascending and descending in turn,
    so every join, the wrap from the last block to the first included, links two short rows."""
    lengths = [int(x) for x in np.random.default_rng(0).integers(1, 1000, 12)]
    order = cycle_order(lengths, seed=1, block_rows=4)
    assert sorted(order) == list(range(12))
    blocks = [[lengths[i] for i in order[a : a + 3]] for a in (0, 3, 6, 9)]
    for k, block in enumerate(blocks):
        assert block == sorted(block, reverse=k % 2 == 1)
    # Fewer rows than a block still make two: the wrap joins the two shortest ends.
    two = [lengths[i] for i in cycle_order(lengths, seed=1)]
    assert two[:6] == sorted(two[:6]) and two[6:] == sorted(two[6:], reverse=True)


def test_partner_is_the_successor_on_the_cycle():
    ids = [str(i) for i in range(11)]
    lengths = list(range(11, 0, -1))
    p = kl_partners(ids, ids, ids, seed=7, lengths=lengths)
    n = len(ids)
    assert all(p.partner[p.order[k]] == p.order[(k + 1) % n] for k in range(n))
    assert sorted(p.partner) == list(range(n))  # a derangement: each completion used once


def test_paired_rows_are_moved_apart_and_stay_a_derangement():
    """Chosen and rejected of one prompt have similar lengths and land side by side after the
    sort; the cycle swaps in the nearest row with another prompt, so no pair shares a prompt
    and every completion is still used exactly once."""
    prompts = [f"p{i // 2}" for i in range(20)]
    completions = [f"c{i}" for i in range(20)]
    lengths = [10 * (i // 2) + i % 2 for i in range(20)]
    p = kl_partners(prompts, completions, [str(i) for i in range(20)], seed=0, lengths=lengths)
    assert p.same_prompt == 0
    assert all(prompts[i] != prompts[j] for i, j in enumerate(p.partner))
    assert sorted(p.partner) == list(range(20))
    assert all(p.partner[p.order[k]] == p.order[(k + 1) % 20] for k in range(20))


def test_partners_never_self_and_never_same_completion():
    prompts = [f"p{i}" for i in range(9)]
    completions = ["same", "same"] + [f"c{i}" for i in range(7)]
    pairing = kl_partners(prompts, completions, [str(i) for i in range(9)], seed=3)
    for i, j in enumerate(pairing.partner):
        assert i != j and completions[i] != completions[j] and prompts[i] != prompts[j]
    assert pairing.same_prompt == 0


def test_partners_are_a_derangement_when_unconstrained_and_seeded():
    ids = [str(i) for i in range(11)]
    a = kl_partners(ids, ids, ids, seed=7).partner
    assert sorted(a) == list(range(11))  # a permutation: each completion used once
    assert a == kl_partners(ids, ids, ids, seed=7).partner
    assert a != kl_partners(ids, ids, ids, seed=8).partner


def test_same_prompt_fallback_is_counted():
    prompts = ["p", "p", "p", "q"]
    pairing = kl_partners(prompts, ["a", "b", "c", "d"], list("0123"), seed=0)
    # Only row 3 has a different prompt; at most one p-row can use it... every p-row may pick q's
    # completion, so count the rows that did not.
    same = sum(prompts[i] == prompts[j] for i, j in enumerate(pairing.partner))
    assert pairing.same_prompt == same


def test_two_rows_pair_with_each_other():
    assert kl_partners(["a", "b"], ["x", "y"], ["0", "1"], seed=0).partner == [1, 0]


def test_no_valid_partner_is_an_error():
    with pytest.raises(InputError, match="row 0: no valid KL partner"):
        kl_partners(["a", "b"], ["same", "same"], ["0", "1"], seed=0)


def test_template_that_renders_the_prompt_differently_is_split_at_the_common_prefix(tokenizer_dir):
    """A 'reasoning' template that inserts an empty think block only when a reply follows."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' %}<think></think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\nReady: {% endif %}"
    )
    ex = Example("c", ({"role": "user", "content": "hi"},), ({"role": "assistant", "content": "hello"},), True, "c.jsonl: row 1")
    row = tokenize_example(ex, tok)
    assert row.prefix_split
    full = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], tokenize=False)
    assert tok.decode([*row.prompt_ids, *row.completion_ids]) == full
    assert tok.decode(row.prompt_ids).endswith("<|im_start|>assistant\n")
    assert "hello" in tok.decode(row.completion_ids)


def test_build_splits_cut_only_what_does_not_fit_and_count_it(tokenizer_dir, tmp_path):
    """Chat rows of 35-40 prompt and 7-14 completion tokens, max_length 50, max_prompt_length 25:
    a row's prompt is cut only when prompt + the longer of its two completions exceeds 50, and
    then to max(25, 50 − longer) tokens, never to 25 as the old rule did."""
    from conftest import chat_rows, staging_content, write_rows

    from kto.precompute.config import PrecomputeConfig
    from kto.precompute.pipeline import stage_rows
    from kto.precompute.splits import build_splits, cache_rows
    from kto.precompute.staging import StagingReader
    from kto.precompute.templates import ChatTemplate

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    cfg = PrecomputeConfig(data=(data,), model="unused", out=tmp_path / "c", max_length=50)
    staged = stage_rows(cfg, tok, ChatTemplate(), staging_content(data))
    [train] = build_splits(cfg, staged, leading_bos_id(tok))
    with StagingReader(staged) as reader:
        rows = cache_rows(reader, train, 0, len(train.rows))
    raw = {}
    for k, r in enumerate(chat_rows()):
        ex = Example(f"chat.jsonl:{k + 1}", tuple(r["prompt"]), tuple(r["completion"]), r["label"], "")
        raw[ex.id] = tokenize_example(ex, tok)
    cut_rows = cut_completions = cut_kl = truncated = 0
    for row in rows:
        src, partner = raw[row.id], raw[row.kl_source_id]
        p, c, k = len(src.prompt_ids), len(src.completion_ids), len(partner.completion_ids)
        fits = p + max(c, k) <= 50
        expected_prompt = p if fits else min(p, max(25, 50 - max(c, k)))
        assert len(row.prompt_ids) == expected_prompt
        assert list(row.prompt_ids) == list(src.prompt_ids[p - expected_prompt :])  # its end
        assert list(row.completion_ids) == list(src.completion_ids[: 50 - expected_prompt])
        assert list(row.kl_completion_ids) == list(partner.completion_ids[: 50 - expected_prompt])
        assert row.truncated == (not fits or c > 50 - expected_prompt)
        cut_rows += not fits
        cut_completions += c > 50 - expected_prompt
        cut_kl += k > 50 - expected_prompt
        truncated += row.truncated
    assert 0 < cut_rows < len(rows)  # the data exercise both cases
    counts = train.counts
    assert (counts.prompt_truncated, counts.completion_truncated, counts.kl_completion_truncated) == (cut_rows, cut_completions, cut_kl)
    assert counts.truncated == truncated
    assert counts.prompt_tokens == sum(len(r.prompt_ids) for r in rows)
    assert counts.kl_completion_tokens == sum(len(r.kl_completion_ids) for r in rows)


def test_cache_rows_are_stored_in_cycle_order(tiny_cache):
    """Row k's KL partner is row k+1 (the last row's is row 0): kto-train's steps rely on it."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from kto.formats.manifest import read_manifest

    m = read_manifest(tiny_cache)
    table = pa.concat_tables([ipc.open_file(pa.memory_map(str(tiny_cache / s.name))).read_all() for s in m.shards])
    ids, sources = table.column("id").to_pylist(), table.column("kl_source_id").to_pylist()
    assert sources == ids[1:] + ids[:1]
    assert m.content.kl_pairing.startswith("cycle") and m.counts.same_prompt_kl_pairs == 0


def test_a_version_1_cache_is_refused_with_one_line(tiny_cache, tmp_path):
    import json
    import shutil

    from kto.formats.manifest import read_manifest

    old = tmp_path / "old"
    shutil.copytree(tiny_cache, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="cache format version 1, this kto reads format version 2 only; re-run kto-precompute") as err:
        read_manifest(old)
    assert "\n" not in str(err.value)


def test_rows_sharing_a_prompt_stay_in_one_block_of_the_cycle():
    """The shuffle moves prompt groups whole: with 40 pairs in 4 blocks of 20 rows, every pair's
    two rows sit in one block (so in one shard of a block's size, scored with one prompt pass)."""
    prompts = [f"q{i // 2}" for i in range(80)]
    lengths = [(i * 37) % 101 for i in range(80)]
    order = cycle_order(lengths, seed=3, block_rows=20, groups=prompts)
    assert sorted(order) == list(range(80))
    block_of = {row: k // 20 for k, row in enumerate(order)}
    assert all(block_of[2 * q] == block_of[2 * q + 1] for q in range(40))
    # Without groups, a plain row shuffle splits most pairs across blocks.
    plain = {row: k // 20 for k, row in enumerate(cycle_order(lengths, seed=3, block_rows=20))}
    assert sum(plain[2 * q] != plain[2 * q + 1] for q in range(40)) > 10
