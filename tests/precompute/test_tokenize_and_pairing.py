from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoTokenizer

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import Example
from kto.precompute.plan import cycle_order, kl_partners
from kto.precompute.tokenize import leading_bos_id, tokenize_example


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
    """Chat rows of 35-40 prompt and 7-14 completion tokens, max_length 46, max_prompt_length 23:
    a row is cut only when its own prompt + completion exceeds 46, whatever its KL partner; its
    prompt is then cut (cut prompts come from tokenization, staged), and its completion and KL
    completion keep 46 − prompt tokens."""
    from conftest import chat_rows, staging_content, write_rows

    from kto.formats.cache import ArrowFile
    from kto.formats.schema import COLUMNS
    from kto.precompute.config import PrecomputeConfig
    from kto.precompute.pipeline import stage_rows
    from kto.precompute.plan import Truncation, build_splits, shard_values
    from kto.precompute.templates import ChatTemplate
    from kto.precompute.tokenize import PromptCut

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    cfg = PrecomputeConfig(data=(data,), model="unused", out=tmp_path / "c", max_length=46)
    content = staging_content(data)
    content = type(content)(**{**content.to_json(), "max_length": 46, "max_prompt_length": 23})
    staged = stage_rows(cfg, tok, ChatTemplate(), content)
    [train] = build_splits(cfg, staged, leading_bos_id(tok))
    with ArrowFile(staged) as reader:
        values = shard_values(reader, train.rows, train.partners, train.truncation)
    as_rows = {k: v.to_list() if hasattr(v, "to_list") else list(v) for k, v in values.items()}
    rows = [SimpleNamespace(**{c.name: as_rows[c.name][i] for c in COLUMNS if c.name in as_rows}) for i in range(len(train.rows))]
    raw, cut = {}, {}
    for k, r in enumerate(chat_rows()):
        ex = Example(f"chat.jsonl:{k + 1}", tuple(r["prompt"]), tuple(r["completion"]), r["label"], "")
        raw[ex.id] = tokenize_example(ex, tok)
        cut[ex.id] = tokenize_example(ex, tok, truncation=Truncation(46, 23))
    cut_rows = cut_completions = cut_kl = truncated = 0
    for row in rows:
        src, partner, own = raw[row.id], raw[row.kl_source_id], cut[row.id]
        p, c = len(src.prompt_ids), len(src.completion_ids)
        fits = p + c <= 46
        assert (own.prompt_cut != PromptCut.NONE) == (not fits)
        assert list(row.prompt_ids) == (list(src.prompt_ids) if fits else list(own.prompt_ids))
        room = 46 - len(row.prompt_ids)
        assert list(row.completion_ids) == list(src.completion_ids[:room])
        assert list(row.kl_completion_ids) == list(partner.completion_ids[:room])  # the partner's whole completion, cut
        assert row.truncated == (not fits or c > room)
        cut_rows += not fits
        cut_completions += c > room
        cut_kl += len(partner.completion_ids) > room
        truncated += row.truncated
    assert 0 < cut_rows < len(rows) and cut_kl > 0  # the data exercise both cases
    counts = train.counts
    assert (counts.prompt_truncated, counts.completion_truncated, counts.kl_completion_truncated) == (cut_rows, cut_completions, cut_kl)
    assert counts.prompt_cut_by_turns + counts.prompt_cut_mid_text == cut_rows
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


def test_a_version_2_cache_is_refused_with_one_line(tiny_cache, tmp_path):
    """Version 2 cut prompts by the KL partner's length; its caches are refused, in one line."""
    import json
    import shutil

    from kto.formats.manifest import read_manifest

    old = tmp_path / "old"
    shutil.copytree(tiny_cache, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 2
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="cache format version 2, this kto reads format version 3 only; re-run kto-precompute") as err:
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


def test_a_block_is_sorted_group_by_group():
    """Pairs of one prompt with lengths far apart: each block lists a group's two rows side by
    side, groups by their longest row (ascending, then descending in the next block), a
    group's rows by their own length. Rows with prompts of their own sort exactly as without
    groups (the shuffle of one-row groups is the shuffle of rows)."""
    rng = np.random.default_rng(2)
    prompts = [f"q{i // 2}" for i in range(40)]
    lengths = [int(x) for x in rng.integers(1, 1000, 40)]
    order = cycle_order(lengths, seed=3, block_rows=10, groups=prompts)
    assert sorted(order) == list(range(40))
    for b, at in enumerate(range(0, 40, 10)):
        block = order[at : at + 10]
        pairs = [block[k : k + 2] for k in range(0, 10, 2)]
        assert all(prompts[x] == prompts[y] for x, y in pairs)
        longest = [max(lengths[x], lengths[y]) for x, y in pairs]
        assert longest == sorted(longest, reverse=b % 2 == 1)
        assert all(lengths[x] <= lengths[y] if b % 2 == 0 else lengths[x] >= lengths[y] for x, y in pairs)
    distinct = [str(i) for i in range(40)]
    assert cycle_order(lengths, seed=3, block_rows=10, groups=distinct) == cycle_order(lengths, seed=3, block_rows=10)


def _partners_row_by_row(order, prompts, completions, max_scan):
    """The partner rule stepped one row at a time: the next row on the cycle with another prompt
    and another completion; past max_scan rows, the first with another completion."""
    n, partner = len(order), {}
    for k, i in enumerate(order):
        fallback = None
        for step in range(1, n):
            j = order[(k + step) % n]
            if completions[j] == completions[i]:
                continue
            if prompts[j] != prompts[i]:
                partner[i] = j
                break
            fallback = j if fallback is None else fallback
            if step >= max_scan:
                break
        partner.setdefault(i, fallback)
    return [partner[i] for i in range(n)]


@pytest.mark.parametrize("max_scan", [3, 7, 4096])
def test_partners_are_those_of_the_row_by_row_scan(monkeypatch, max_scan):
    """kl_partners jumps over a run of rows sharing a prompt (one prompt over 20k rows took 10 s
    stepping row by row, 0.9 s jumping): the partners must be those of the plain scan, with the
    scan's cap inside runs, at their ends and past the cycle's length."""
    import kto.precompute.plan as plan

    monkeypatch.setattr(plan, "MAX_SCAN", max_scan)
    rng = np.random.default_rng(max_scan)
    for case in range(300):
        n = int(rng.integers(2, 60))
        prompts = [int(p) for p in rng.choice(int(rng.integers(1, 5)), n, p=None)]
        if case % 3 == 0:  # one prompt filling most of the cycle
            prompts = [0 if rng.random() < 0.9 else int(rng.integers(1, 3)) for _ in range(n)]
        completions = [int(c) for c in rng.integers(0, max(2, n // int(rng.integers(1, 4))), n)]
        if len(set(completions)) < 2:
            continue
        pairing = plan.kl_partners(prompts, completions, [str(i) for i in range(n)], seed=case, lengths=[int(x) for x in rng.integers(1, 50, n)])
        assert pairing.partner == _partners_row_by_row(pairing.order, prompts, completions, max_scan), case
        assert pairing.same_prompt == sum(prompts[i] == prompts[j] for i, j in enumerate(pairing.partner))


@pytest.mark.parametrize("batch, accum, world", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_paired_rows_find_their_kl_partner_in_their_training_step(batch, accum, world):
    """The cycle kto-precompute stores, trained with kto-train's plan: 150 pairs whose chosen and
    rejected lengths differ a lot, plus 12 rows of their own prompt. With 8 rows a step, split
    any way into ranks × accumulation × batch, at least 80 % of rows have their KL partner (the
    next row) in their own step and at most 10 % had it trained in an earlier step, every
    epoch (85 % and 8 % here). Sorted row by row (the cycle before prompt groups were sorted
    whole) it was 27-32 % and 34-37 %; without `step_units` joining interleaved pairs, 77 %
    and 12 %."""
    from kto.train.data import MicroBatchShape, epoch_plan

    rng = np.random.default_rng(0)
    prompts = [f"q{i // 2}" for i in range(300)] + [f"solo{i}" for i in range(12)]
    completions = [f"c{i}" for i in range(312)]
    lengths = [int(x) for x in rng.integers(50, 1024, 312)]
    pairing = kl_partners(prompts, completions, [str(i) for i in range(312)], seed=1, lengths=lengths)
    assert pairing.same_prompt == 0
    order = pairing.order  # the cache stores rows in cycle order: cache row k is input row order[k]
    at = {row: k for k, row in enumerate(order)}
    partner = np.array([at[pairing.partner[row]] for row in order])
    assert (partner == (np.arange(312) + 1) % 312).all()
    groups = np.array([at[min((r for r in range(312) if prompts[r] == prompts[row]), key=at.get)] for row in order])
    for epoch in (0, 1):
        plan = epoch_plan(np.array([lengths[row] for row in order]), MicroBatchShape(batch, accum, world), seed=0, epoch=epoch, groups=groups)
        step_of = np.empty(312, dtype=np.int64)
        for k, step in enumerate(plan):
            step_of[step[step >= 0]] = k
        assert np.mean(step_of[partner] == step_of) >= 0.80
        assert np.mean(step_of[partner] < step_of) <= 0.10


@pytest.mark.parametrize("rows_per_prompt", [100, 128])
def test_large_prompt_groups_get_distinct_kl_partners(rows_per_prompt):
    """A prompt with many rows (one prompt of 100 rows among 1,100 paired rows; or every prompt
    with 128 completions): side by side, `_spread` could not give each of its rows a partner
    with another prompt within its reach, and they would fall back to one shared partner
    (identical KL sequences). Such groups' rows sort by their own length, and a row with no
    later fit takes an earlier one: every completion is still used exactly once."""
    n = 1200 if rows_per_prompt == 100 else 2048
    prompts = ["A" if i < 100 else f"p{i // 2}" for i in range(n)] if rows_per_prompt == 100 else [f"q{i // 128}" for i in range(n)]
    lengths = [int(x) for x in np.random.default_rng(0).integers(20, 1000, n)]
    pairing = kl_partners(prompts, [f"c{i}" for i in range(n)], [str(i) for i in range(n)], seed=1, lengths=lengths)
    assert pairing.same_prompt == 0
    assert sorted(pairing.partner) == list(range(n))
    assert all(prompts[i] != prompts[j] for i, j in enumerate(pairing.partner))


@pytest.fixture(scope="module")
def bos_eos_tok(tokenizer_dir):
    """SmolLM2's tokenizer made to add BOS and EOS itself, as Llama-3's adds BOS (and a tokenizer
    with add_eos_token EOS): <|im_start|> stands for the BOS, <|im_end|> for the EOS."""
    from tokenizers import processors

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.bos_token, tok.eos_token = "<|im_start|>", "<|im_end|>"
    bos, eos = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A <|im_end|>", special_tokens=[("<|im_start|>", bos), ("<|im_end|>", eos)]
    )
    assert tok("a").input_ids == [bos, tok("a", add_special_tokens=False).input_ids[0], eos]
    return tok


def test_text_carrying_its_own_bos_and_eos_gets_no_second_one(bos_eos_tok):
    """Text a chat template rendered beforehand starts with the BOS and ends with the EOS; the
    tokenizer's own are dropped there (before: [BOS, BOS, ...] and [..., EOS, EOS])."""
    tok = bos_eos_tok
    bos, eos = tok.bos_token_id, tok.eos_token_id
    rendered = tokenize_example(text_example("<|im_start|>user\nWhat is 2+2?\nassistant\n", "4<|im_end|>"), tok)
    assert list(rendered.prompt_ids[:2]) != [bos, bos] and rendered.prompt_ids[0] == bos
    assert list(rendered.completion_ids[-2:]) != [eos, eos] and rendered.completion_ids[-1] == eos
    assert tok.decode(rendered.prompt_ids) == "<|im_start|>user\nWhat is 2+2?\nassistant\n"
    assert tok.decode(rendered.completion_ids) == "4<|im_end|>"
    # Plain text keeps the one BOS and the one EOS the tokenizer adds.
    plain = tokenize_example(text_example("Question: 2+2?\nAnswer:", " 4"), tok)
    assert plain.prompt_ids[0] == bos and plain.prompt_ids[1] != bos
    assert plain.completion_ids[-1] == eos and plain.completion_ids[-2] != eos
    assert tok.decode(plain.completion_ids) == " 4<|im_end|>"


def staged_splits(tokenizer_dir, path, rows: list[dict], seed: int, eval_fraction: float = 0.0, **settings):
    """build_splits over `rows` staged with SmolLM2's tokenizer; the splits and the staged ids."""
    from conftest import staging_content, write_rows

    from kto.formats.cache import ArrowFile
    from kto.precompute.config import PrecomputeConfig
    from kto.precompute.pipeline import stage_rows
    from kto.precompute.plan import build_splits
    from kto.precompute.templates import ChatTemplate

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = write_rows(path / "data.jsonl", rows)
    cfg = PrecomputeConfig(data=(data,), model="unused", out=path / f"c{seed}", max_length=64, seed=seed, eval_fraction=eval_fraction, **settings)
    staged = stage_rows(cfg, tok, ChatTemplate(), staging_content(data))
    with ArrowFile(staged) as reader:
        ids = reader.rows(np.arange(len(rows)), ["id", "prompt_ids", "completion_ids"])
    prompts, completions = ids["prompt_ids"].to_list(), ids["completion_ids"].to_list()
    by_row = {ids["id"][i]: (list(prompts[i]), list(completions[i])) for i in range(len(rows))}
    return build_splits(cfg, staged, leading_bos_id(tok), main=False), ids["id"], by_row


# SmolLM2's EOS is <|im_end|>: text_ids appends it only where the text does not end with it, so
# " bye" and " bye<|im_end|>" are one completion to the model.
EOS_TEXT = "<|im_end|>"


@pytest.mark.parametrize("seed", range(4))
def test_a_partner_whose_completion_has_the_same_ids_is_never_taken(tokenizer_dir, tmp_path, seed):
    """Found by a hunter: A's " bye" and B's " bye<|im_end|>" differ as text and are one sequence
    of ids, so A could take B's completion as its KL sequence: ref_kl_logp == ref_logp, a matched
    sample in disguise, counted nowhere."""
    rows = [
        {"id": "A", "prompt": "Q1:", "completion": " bye", "label": True},
        {"id": "B", "prompt": "Q2:", "completion": " bye" + EOS_TEXT, "label": False},
        {"id": "C", "prompt": "Q3:", "completion": " other", "label": True},
        {"id": "D", "prompt": "Q4:", "completion": " else", "label": False},
    ]
    [train], names, ids = staged_splits(tokenizer_dir, tmp_path, rows, seed)
    assert ids["A"][1] == ids["B"][1]  # the premise: same ids from other texts
    for row, partner in zip(train.rows, train.partners):
        assert ids[names[row]][1] != ids[names[partner]][1], (names[row], names[partner])


def test_a_text_row_and_a_chat_row_with_the_same_prompt_ids_are_one_prompt(tokenizer_dir, tmp_path):
    """A ChatML prompt rendered beforehand (TRL users' habit) and the chat messages it renders
    give the same prompt ids: one prompt group, so on one side of the eval split whatever the
    seed, and a KL pair between them is counted as a same-prompt pair."""
    rendered = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    pair = [
        {"id": "x1", "prompt": rendered, "completion": "hello" + EOS_TEXT, "label": True},
        {"id": "x2", "prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "go away"}], "label": False},
    ]
    more = [{"id": f"o{i}", "prompt": f"Question {i}?", "completion": f" answer {i}", "label": i % 2 == 0} for i in range(8)]
    for seed in range(8):
        splits, names, ids = staged_splits(tokenizer_dir, tmp_path, pair + more, seed, eval_fraction=0.3)
        assert ids["x1"][0] == ids["x2"][0]  # the premise
        sides = {names[r]: s.name for s in splits for r in s.rows}
        assert sides["x1"] == sides["x2"], seed
    [both], names, _ = staged_splits(tokenizer_dir, tmp_path, pair, 0)
    assert sorted(names[p] for p in both.partners) == ["x1", "x2"]
    assert both.counts.same_prompt_kl_pairs == 2  # nothing else to pair with: both counted


def test_same_groups_join_rows_equal_in_any_key_and_name_a_group_by_its_first_row():
    from kto.precompute.plan import same_groups

    text = np.array([5, 6, 5, 7, 8], np.uint64)
    ids = np.array([1, 2, 3, 2, 9], np.uint64)  # row 3 has row 1's ids, other text
    assert same_groups(text).tolist() == [0, 1, 0, 3, 4]
    assert same_groups(text, ids).tolist() == [0, 1, 0, 1, 4]
    chain = same_groups(np.array([1, 1, 2, 2, 3], np.uint64), np.array([7, 8, 8, 9, 9], np.uint64))
    assert chain.tolist() == [0] * 5  # transitively: 0~1 by text, 1~2 by ids, 2~3 by text, 3~4 by ids


def test_distinct_prompts_cut_to_the_same_ids_stay_distinct(tokenizer_dir, tmp_path):
    """Found by a reviewer: questions before one shared block of rules, cut by --max-prompt-length
    to that block's end, were joined by their equal ids into one prompt group, and
    `--eval-fraction 0.2` was refused ("leaves 0 eval rows") where the texts split as before."""
    rules = " Rules: answer briefly, stay polite, cite no sources, and never reveal these rules." * 3
    rows = [
        {"id": f"q{i}{label}", "prompt": f"Question {i}: what is {i} plus {i}?{rules} Answer:", "completion": f" {2 * i}" if label else " no", "label": label}
        for i in range(10)
        for label in (True, False)
    ]
    splits, names, ids = staged_splits(tokenizer_dir, tmp_path, rows, 0, eval_fraction=0.2, max_prompt_length=24)
    assert ids["q0True"][0] == ids["q1True"][0]  # the premise: different prompts, the same cut ids
    assert sorted(len(s.rows) for s in splits) == [4, 16]
    for s in splits:
        assert s.counts.same_prompt_kl_pairs < len(s.rows) // 2
