"""Values no shard may hold (formats.shards.shard_value_problems): non-finite reference
log-probs and token ids outside the cache tokenizer's vocabulary. kto-inspect verify lists them;
the one cache reader (formats/cache.py, which kto-train uses) refuses the shard with one line."""

import numpy as np
import pyarrow as pa
import pytest
from conftest import rewrite_shard, unverified_copy

from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.shards import MAX_LINES_PER_CHECK, shard_table, shard_value_problems, tokenizer_vocab_size


def rewrite(cache, index, edit):
    """Edit one shard and record its new sha256, so only the bad value remains; its row ids."""
    return rewrite_shard(cache, index, edit)[S.ID]


NAN, INF = float("nan"), float("inf")


def table(**columns):
    """A three-row shard; `columns` replace the sound defaults."""
    base = {
        S.ID: ["a", "b", "c"],
        S.LABEL: [True, False, True],
        S.PROMPT_IDS: [[1, 2], [3, 4], [5]],
        S.COMPLETION_IDS: [[6], [7, 8], [9]],
        S.REF_LOGP: [-1.0, -2.0, -3.0],
        S.REF_TOKEN_LOGPS: [[-1.0], [-1.5, -0.5], [-3.0]],
        S.KL_SOURCE_ID: ["b", "c", "a"],
        S.KL_COMPLETION_IDS: [[7], [9], [6]],
        S.REF_KL_LOGP: [-0.5, -0.25, -1.0],
        S.REF_KL_TOKEN_LOGPS: [None, None, None],
        S.TRUNCATED: [False] * 3,
    }
    # Declared columns not named here get zeros of their type (shards.shard_table).
    return shard_table({**base, **columns}, fill_missing=True)


def test_sound_values_pass():
    assert shard_value_problems(table(), "X", 10) == []


def test_each_bad_value_is_named_by_row_id_and_position():
    t = table(
        **{
            S.REF_LOGP: [-1.0, NAN, None],
            S.REF_KL_LOGP: [INF, -0.25, -1.0],
            S.REF_TOKEN_LOGPS: [[-1.0], [-1.5, -INF], None],  # row 3: not stored, fine
            S.REF_KL_TOKEN_LOGPS: [None, [None], None],
            S.PROMPT_IDS: [[1, 2], [3, -1], [5]],
            S.COMPLETION_IDS: [[6], [7, 8], [9, 10, 11]],  # vocabulary 0 … 9
        }
    )
    assert shard_value_problems(t, "X", 10) == [
        "X row 2 (id 'b'): ref_logp is nan",
        "X row 3 (id 'c'): ref_logp is null",
        "X row 1 (id 'a'): ref_kl_logp is inf",
        "X row 2 (id 'b'): ref_token_logps has -inf at token 2",
        "X row 2 (id 'b'): ref_kl_token_logps has null at token 1",
        "X row 2 (id 'b'): prompt_ids holds token id -1 at position 2; ids must lie in [0, 10), the cache tokenizer's vocabulary",
        "X row 3 (id 'c'): completion_ids holds token id 10 at position 2; ids must lie in [0, 10), the cache tokenizer's vocabulary",
    ]
    # Without a known vocabulary only the sign is checked.
    assert shard_value_problems(t, "X", None)[-1] == "X row 2 (id 'b'): prompt_ids holds token id -1 at position 2; ids must be >= 0"


def test_a_positive_log_prob_is_refused():
    """Seen in an attack: row 0's per-token log-probs set to their absolute values (sum kept
    consistent, sha patched) passed verify and trained. No log softmax is ever above 0."""
    t = table(**{S.REF_LOGP: [1.0, -2.0, 0.0], S.REF_TOKEN_LOGPS: [[1.0], [-1.5, -0.5], [0.0]], S.REF_KL_LOGP: [-0.5, 0.25, -1.0]})
    assert shard_value_problems(t, "X", 10) == [
        "X row 1 (id 'a'): ref_logp is 1.0 (positive: no log-prob is)",
        "X row 2 (id 'b'): ref_kl_logp is 0.25 (positive: no log-prob is)",
        "X row 1 (id 'a'): ref_token_logps has 1.0 (positive: no log-prob is) at token 1",
    ]


def test_rows_count_from_a_sliced_table_and_lines_are_capped():
    n = 3 * MAX_LINES_PER_CHECK
    t = pa.concat_tables([table()] * MAX_LINES_PER_CHECK).slice(1)  # rows b, c, a, b, …
    t = t.set_column(t.schema.get_field_index(S.REF_LOGP), S.REF_LOGP, pa.array(np.full(n - 1, NAN)))
    lines = shard_value_problems(t, "X", 10)
    assert lines[0] == "X row 1 (id 'b'): ref_logp is nan" and lines[2] == "X row 3 (id 'a'): ref_logp is nan"
    assert len(lines) == MAX_LINES_PER_CHECK + 1
    assert lines[-1] == f"… and {n - 1 - MAX_LINES_PER_CHECK} more rows with a bad ref_logp"


def test_vocab_size_comes_from_the_cache_tokenizer(tiny_cache, tmp_path):
    from transformers import AutoTokenizer

    assert tokenizer_vocab_size(tiny_cache) == len(AutoTokenizer.from_pretrained(tiny_cache / S.TOKENIZER_DIR)) == 49152
    assert tokenizer_vocab_size(tmp_path) is None  # no tokenizer/: only the sign can be checked


@pytest.fixture
def cache(tiny_cache, tmp_path):
    return unverified_copy(tiny_cache, tmp_path / "cache")


@pytest.mark.parametrize(
    "edit, what",
    [
        (lambda d: d[S.REF_LOGP].__setitem__(2, NAN), "row 3 (id {id2!r}): ref_logp is nan"),
        (lambda d: d[S.REF_TOKEN_LOGPS][2].__setitem__(0, INF), "row 3 (id {id2!r}): ref_token_logps has inf at token 1"),
        (
            lambda d: d[S.KL_COMPLETION_IDS][2].__setitem__(0, 49152),
            "row 3 (id {id2!r}): kl_completion_ids holds token id 49152 at position 1; ids must lie in [0, 49152)",
        ),
    ],
)
def test_training_reader_refuses_the_shard(cache, edit, what):
    from kto.formats.cache import open_cache

    ids = rewrite(cache, 1, edit)
    reader = open_cache(cache)
    reader.table(0)  # sound shards still read
    with pytest.raises(InputError) as exc:
        reader.rows([5, 6, 7])  # rows of shard 1
    assert str(exc.value).startswith(f"{cache / 'shard-00001.arrow'} " + what.format(id2=ids[2]))
    assert "\n" not in str(exc.value)
