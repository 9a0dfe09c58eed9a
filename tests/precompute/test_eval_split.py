"""--eval-fraction: stratified by label, rows sharing a prompt on one side, tiny sets stated."""

import random

import polars as pl
import pytest
from conftest import chat_rows, precompute_args, write_rows

from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.manifest import read_manifest
from kto.precompute.plan import EVAL_SPLIT_RULE, eval_targets, split_eval


def labelled(n_desirable: int, n_undesirable: int) -> tuple[list[int], list[bool], list[int]]:
    """Rows 0..n-1, desirable first, each with a prompt of its own."""
    labels = [True] * n_desirable + [False] * n_undesirable
    return list(range(len(labels))), labels, list(range(len(labels)))


def test_each_label_gets_its_share():
    """16 desirable, 4 undesirable, f = 0.25: round(0.25·16) = 4 and round(0.25·4) = 1, for every seed."""
    rows, labels, groups = labelled(16, 4)
    for seed in range(20):
        train, evals = split_eval(rows, labels, groups, 0.25, seed)
        assert sum(labels[i] for i in evals) == 4 and sum(not labels[i] for i in evals) == 1, seed
        assert sorted(train + evals) == rows and train == sorted(train) and evals == sorted(evals)


def test_a_small_set_with_both_labels_gets_both_in_eval():
    """10 rows, 8 desirable and 2 undesirable, f = 0.2: round(0.2·10) = 2 eval rows; by share they
    would be round(1.6) = 2 desirable and round(0.4) = 0 undesirable (all desirable); at least one
    of each makes 1 and 1. The unstratified shuffle gave an all-desirable split for most seeds."""
    assert (eval_targets(8, 2, 0.2).desirable, eval_targets(8, 2, 0.2).undesirable) == (1, 1)
    rows, labels, groups = labelled(8, 2)
    for seed in range(20):
        _, evals = split_eval(rows, labels, groups, 0.2, seed)
        assert sorted(labels[i] for i in evals) == [False, True], seed


def test_tiny_sets_are_stated():
    # A label with one row stays in training; fewer than 2 eval rows is refused as before.
    assert (eval_targets(9, 1, 0.2).desirable, eval_targets(9, 1, 0.2).undesirable) == (2, 0)
    assert (eval_targets(5, 5, 0.1).desirable, eval_targets(5, 5, 0.1).undesirable) == (1, 1)  # round(0.5) = 0 each: at least one
    rows, labels, groups = labelled(8, 2)
    with pytest.raises(InputError, match=r"--eval-fraction 0.1: leaves 1 eval rows of 10; each split needs at least 2"):
        split_eval(rows, labels, groups, 0.1, 0)


def test_rows_sharing_a_prompt_stay_on_one_side():
    """Random data with prompt groups of 1-4 rows: no group straddles, and the eval split never
    holds more of a label than its target."""
    rng = random.Random(0)
    for trial in range(50):
        groups = [g for g in range(rng.randint(10, 40)) for _ in range(rng.randint(1, 4))]
        labels = [rng.random() < 0.7 for _ in groups]
        rows = list(range(len(groups)))
        fraction = rng.choice([0.1, 0.2, 0.3])
        try:
            train, evals = split_eval(rows, labels, groups, fraction, trial)
        except InputError:
            continue
        assert not {groups[i] for i in train} & {groups[i] for i in evals}, trial
        t = eval_targets(sum(labels), len(labels) - sum(labels), fraction)
        assert sum(labels[i] for i in evals) <= t.desirable and sum(not labels[i] for i in evals) <= t.undesirable


def test_pairs_stay_together_and_balance():
    """10 prompts, each with a desirable and an undesirable row (a pair), f = 0.3: 3 whole pairs."""
    groups = [g for g in range(10) for _ in range(2)]
    labels = [True, False] * 10
    _, evals = split_eval(list(range(20)), labels, groups, 0.3, 0)
    assert len(evals) == 6 and len({groups[i] for i in evals}) == 3 and sum(labels[i] for i in evals) == 3


def test_the_cli_split_is_by_label_and_prompt_and_the_fingerprint_records_it(tmp_path, tiny_model_dir):
    from click.testing import CliRunner

    from kto.formats.manifest import read_manifest
    from kto.precompute.cli import main

    rows = chat_rows()  # 8 questions, each answered once well (desirable) and once badly
    data = write_rows(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "c"
    result = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, out, "--eval-fraction", "0.25"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "eval split: 4 rows (2 desirable, 2 undesirable)" in result.output
    prompts = {name: {tuple(p) for p in pl.read_ipc(f"{d}/*.arrow")["prompt_ids"].to_list()} for name, d in (("train", out), ("eval", out / S.EVAL_DIR))}
    assert len(prompts["eval"]) == 2 and len(prompts["train"]) == 6 and not prompts["eval"] & prompts["train"]
    assert read_manifest(out).content.eval_split == EVAL_SPLIT_RULE == read_manifest(out / S.EVAL_DIR).content.eval_split
    plain = tmp_path / "plain"
    assert CliRunner().invoke(main, precompute_args(data, tiny_model_dir, plain), catch_exceptions=False).exit_code == 0
    assert "eval_split" not in read_manifest(plain).content.to_json()  # --eval-fraction 0: today's content, today's fingerprint


@pytest.mark.parametrize("seed", range(8))
def test_a_single_row_of_the_common_label_does_not_crowd_out_the_rarer_one(seed):
    """Three pairs and two single desirable rows (5 desirable, 3 undesirable), a quarter held out:
    one pair meets both targets. Visited in plain shuffle order, a single desirable row taken
    first filled the desirable target, no pair fitted any more, and seeds 0 and 4 were refused
    with 1 eval row."""
    groups = ["p0", "p0", "p1", "p1", "s2", "p3", "p3", "s4"]
    labels = [True, False, True, False, True, True, False, True]
    train, evals = split_eval(list(range(8)), labels, groups, 0.25, seed)
    assert sorted(labels[i] for i in evals) == [False, True]  # one pair: both targets met
    assert groups[evals[0]] == groups[evals[1]]


def test_held_out_inputs_are_the_eval_split_whole_and_paired_among_themselves(tmp_path, tiny_model_dir):
    """--eval-data: a dataset's own test split (TRL's dataset_test_split) is CACHE/eval, every
    row of it and no other; each KL partner comes from the same split; both caches record the
    held-out inputs. Given with --eval-fraction, or with the bytes of a --data input, refused."""
    import shutil

    from click.testing import CliRunner

    from kto.formats.manifest import read_manifest
    from kto.precompute.cli import main
    from kto.precompute.pipeline import EVAL_DATA_RULE

    rows = chat_rows()
    train, test = write_rows(tmp_path / "train.jsonl", rows[:12]), write_rows(tmp_path / "test.jsonl", rows[12:])
    out = tmp_path / "c"
    result = CliRunner().invoke(main, precompute_args(train, tiny_model_dir, out, "--eval-data", str(test)), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "eval split: 4 rows (2 desirable, 2 undesirable), the rows of --eval-data" in result.output
    ids = {name: pl.read_ipc(f"{d}/*.arrow") for name, d in (("train", out), ("eval", out / S.EVAL_DIR))}
    assert sorted(ids["eval"]["id"]) == [f"test.jsonl:{i}" for i in range(1, 5)]
    assert sorted(ids["train"]["id"]) == sorted(f"train.jsonl:{i}" for i in range(1, 13))
    for split in ids.values():
        assert set(split["kl_source_id"]) <= set(split["id"])  # partners from the same split
    for cache in (out, out / S.EVAL_DIR):
        content = read_manifest(cache).content
        assert content.eval_split == EVAL_DATA_RULE and [i["name"] for i in content.eval_inputs] == ["test.jsonl"]
    both = CliRunner().invoke(main, precompute_args(train, tiny_model_dir, tmp_path / "b", "--eval-data", str(test), "--eval-fraction", "0.2"))
    assert both.exit_code == 2 and "--eval-data and --eval-fraction 0.2: give one" in both.output
    copy = shutil.copy(train, tmp_path / "copy.jsonl")
    leak = CliRunner().invoke(main, precompute_args(train, tiny_model_dir, tmp_path / "l", "--eval-data", str(copy)))
    assert leak.exit_code == 2 and "--eval-data copy.jsonl: the same rows as --data train.jsonl (same bytes)" in leak.output, leak.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "l").exists()


def test_held_out_rows_are_told_by_their_text_and_their_ids_may_repeat_the_trains(tmp_path, tiny_model_dir):
    """Seen in a review: train and test files of one name in two folders (ids data.jsonl:N in
    both) made a cache that verify and kto-train refused as sharing rows; the training rows
    given again in another format (other bytes, other spelling) were taken as held out."""
    import json

    from click.testing import CliRunner

    from kto.inspection.cli import main as inspect
    from kto.precompute.cli import main
    from kto.precompute.config import PrecomputeConfig

    rows = chat_rows()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    train, test = write_rows(tmp_path / "a" / "data.jsonl", rows[:12]), write_rows(tmp_path / "b" / "data.jsonl", rows[12:])
    out = tmp_path / "c"
    assert CliRunner().invoke(main, precompute_args(train, tiny_model_dir, out, "--eval-data", str(test)), catch_exceptions=False).exit_code == 0
    assert CliRunner().invoke(inspect, ["verify", str(out)]).exit_code == 0
    # Ids of the two files differ too, so score files of both splits join on id.
    assert sorted(pl.read_ipc(f"{out}/shard-*.arrow")["id"])[:2] == ["a/data.jsonl:1", "a/data.jsonl:10"]
    assert sorted(pl.read_ipc(f"{out / S.EVAL_DIR}/shard-*.arrow")["id"])[:2] == ["b/data.jsonl:1", "b/data.jsonl:2"]
    from kto.formats.cache import open_cache
    from kto.train.eval_cache import check_no_shared_rows

    check_no_shared_rows(open_cache(out / S.EVAL_DIR), open_cache(out), SimpleEvalConfig(out))  # no InputError: other rows
    as_array = tmp_path / "train.json"
    as_array.write_text(json.dumps(rows[:12]))
    again = CliRunner().invoke(main, precompute_args(train, tiny_model_dir, tmp_path / "d", "--eval-data", str(as_array)))
    assert again.exit_code == 2 and "all 12 of its rows are --data rows (the same prompt, completion and label, as text or as token ids)" in again.output, (
        again.output
    )
    assert PrecomputeConfig(data=train, eval_data=test, model="m", out=tmp_path / "e").eval_data == (test,)  # one path, not its letters


class SimpleEvalConfig:
    def __init__(self, out):
        self.cache, self.eval_cache = out, out / S.EVAL_DIR


def test_the_caches_manifest_appears_only_once_every_split_is_scored(tmp_path, tiny_model_dir, monkeypatch):
    """A kto-precompute killed while scoring the eval split left CACHE/manifest.json (and
    tokenizer/) in place beside an unfinished CACHE/eval: kto-train took CACHE as a finished
    cache. Now every split is scored before any manifest is written, CACHE's last."""
    import kto.precompute
    from kto.precompute import pipeline
    from kto.precompute.config import PrecomputeConfig

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    cfg = PrecomputeConfig(data=(data,), model=str(tiny_model_dir), out=tmp_path / "c", max_length=64, rows_per_shard=5, eval_fraction=0.25)
    real = pipeline.score_and_write

    def killed_in_the_eval_split(split, *args, **kwargs):
        if split.name == "eval":
            raise RuntimeError("killed")
        return real(split, *args, **kwargs)

    monkeypatch.setattr(pipeline, "score_and_write", killed_in_the_eval_split)
    with pytest.raises(RuntimeError, match="killed"):
        kto.precompute.run(cfg)
    assert list((tmp_path / "c").glob("shard-*.arrow")) and not (tmp_path / "c" / "manifest.json").exists()
    monkeypatch.undo()
    result = kto.precompute.run(cfg)  # the rerun finishes both
    assert read_manifest(tmp_path / "c").fingerprint == result.fingerprint and read_manifest(tmp_path / "c" / "eval").fingerprint == result.eval_fingerprint


def test_held_out_rows_are_told_by_the_ids_the_model_sees(tmp_path, tiny_model_dir):
    """Found by a hunter: the training rows given again with their completions ending in the
    EOS's string (SmolLM2's <|im_end|>, which text rows get appended anyway) are the same ids,
    so the same rows to the model: all of them refused, some of them warned about."""
    from click.testing import CliRunner

    from kto.precompute.cli import main

    train = [{"id": f"d{i}", "prompt": f"Q{i}:", "completion": f" answer {i}", "label": i % 2 == 0} for i in range(4)]
    again = [{**row, "completion": row["completion"] + "<|im_end|>"} for row in train]
    data = write_rows(tmp_path / "train.jsonl", train)
    all_eos = write_rows(tmp_path / "all.jsonl", again)
    refused = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, tmp_path / "a", "--eval-data", str(all_eos)))
    assert refused.exit_code == 2, refused.output
    assert "all 4 of its rows are --data rows (the same prompt, completion and label, as text or as token ids)" in refused.output
    some = write_rows(tmp_path / "some.jsonl", [again[0], {"id": "e", "prompt": "Q9:", "completion": " other", "label": False}])
    warned = CliRunner().invoke(main, precompute_args(data, tiny_model_dir, tmp_path / "b", "--eval-data", str(some)), catch_exceptions=False)
    assert warned.exit_code == 0, warned.output
    assert (
        f"warning: --eval-data {some}: 1 of its 2 rows are also --data rows (the same prompt, completion and label, as text or as token ids)" in warned.output
    )
