"""What a kto-precompute rerun into an existing --out says when it refuses: each differing
setting with its value there and now, as kto-train's --resume refusal does, on one line.

Found by a user iterating on data: "differs in max_length, max_prompt_length" left them to
guess the values the cache was made with, and a renamed copy of the same file was refused as
"differs in inputs" without saying that only the name changed."""

import hashlib
import shutil

from click.testing import CliRunner
from conftest import chat_rows, precompute_args, write_rows

from kto.precompute.cli import main
from kto.precompute.output import _difference


def refusal(*args) -> str:
    """The last output line of a kto-precompute run that must be refused (exit 2)."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2, result.output
    return result.output.strip().splitlines()[-1]


def test_a_changed_length_limit_is_said_with_its_values_there_and_now(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "data.jsonl", chat_rows())
    out = tmp_path / "c"
    assert CliRunner().invoke(main, precompute_args(data, tiny_model_dir, out)).exit_code == 0
    line = refusal(*precompute_args(data, tiny_model_dir, out, "--max-length", "128", "--rows-per-shard", "4"))
    # precompute_args gives --max-length 64 (the prompt cap is half of it) and --rows-per-shard 5;
    # the later flag wins.
    assert "differs in max_length (64 there, 128 now), max_prompt_length (32 there, 64 now), rows_per_shard (5 there, 4 now)" in line, line
    assert line.endswith("pass --overwrite to replace it or choose another directory"), line


def test_a_renamed_copy_of_the_same_file_says_only_the_name_changed(tmp_path, tiny_model_dir):
    """The name stays part of the identity (rows without an id column take their ids from it,
    and errors name rows by it), so the rerun is still refused, saying why."""
    data = write_rows(tmp_path / "data.jsonl", chat_rows())
    out = tmp_path / "c"
    assert CliRunner().invoke(main, precompute_args(data, tiny_model_dir, out)).exit_code == 0
    renamed = tmp_path / "data_v2.jsonl"
    shutil.copyfile(data, renamed)
    line = refusal(*precompute_args(renamed, tiny_model_dir, out))
    assert "differs in inputs (data.jsonl there, data_v2.jsonl now: the same sha256" in line, line
    assert "ids" in line and "--overwrite" in line, line


def _content(**over) -> dict:
    base = {"inputs": [{"name": "data.jsonl", "sha256": "a" * 64}], "max_length": 64, "tokenizer": {"vocabulary": "1" * 64, "chat_template": "2" * 64}}
    return {**base, **over}


def test_renamed_files_with_other_bytes_are_not_called_the_same():
    old = _content()
    new = _content(inputs=[{"name": "data_v2.jsonl", "sha256": "b" * 64}])
    said = _difference(old, {}, new, {}, "the cache")
    assert said.endswith("(differs in inputs (data.jsonl there, data_v2.jsonl now: other bytes))"), said
    reordered = _difference(
        _content(inputs=[{"name": "a.jsonl", "sha256": "a" * 64}, {"name": "b.jsonl", "sha256": "b" * 64}]),
        {},
        _content(inputs=[{"name": "b.jsonl", "sha256": "b" * 64}, {"name": "a.jsonl", "sha256": "a" * 64}]),
        {},
        "the cache",
    )
    assert "inputs (a.jsonl, b.jsonl there, b.jsonl, a.jsonl now: the same files in another order" in reordered, reordered


def test_held_out_input_changed_in_place_names_the_file_and_both_hashes():
    old = _content(eval_inputs=[{"name": "test.jsonl", "sha256": "c" * 64}])
    new = _content(eval_inputs=[{"name": "test.jsonl", "sha256": "d" * 64}])
    said = _difference(old, {}, new, {}, "the cache")
    assert said.endswith("(differs in eval_inputs test.jsonl (sha256 cccccccccccc… there, dddddddddddd… now))"), said


def test_long_values_are_shortened_and_the_message_stays_one_line():
    template = hashlib.sha256(b"{% for m in messages %}...").hexdigest()
    rule = "cut the prompt from the left, then the completion from the right\n" * 3
    old = _content(truncation=rule, columns={"prompt": "prompt", "completion": "completion", "label": "label"})
    new = _content(
        chat_template=template,
        truncation=rule + "and more",
        columns={"prompt": "question", "completion": "completion", "label": "label"},
        tokenizer={"vocabulary": "1" * 64, "chat_template": "3" * 64},
    )
    said = _difference(old, {"batch_tokens": 256}, new, {"batch_tokens": 512}, "the cache")
    assert "\n" not in said and len(said) < 600, said
    assert f"chat_template ((absent) there, {template[:12]}… now)" in said, said
    assert "columns.prompt (prompt there, question now)" in said, said
    assert "tokenizer.chat_template (222222222222… there, 333333333333… now)" in said, said
    assert f"truncation (sha256 {hashlib.sha256(rule.encode()).hexdigest()[:12]}…, {len(rule)} chars there, " in said, said
    assert said.endswith("batch_tokens (256 there, 512 now))"), said


def test_a_hub_dataset_input_is_said_by_its_revision_not_a_key_error():
    """A hub dataset's identity holds a revision and no sha256: the refusal's input check read
    `sha256` of every input and ended in a KeyError traceback for any rerun of such a cache."""
    hub = {"name": "trl-lib/kto-mix-14k", "config": None, "split": "train", "dataset": "trl-lib/kto-mix-14k"}
    old = _content(inputs=[{**hub, "revision": "c" * 40}])
    new = _content(inputs=[{**hub, "revision": "d" * 40}], max_length=128)
    said = _difference(old, {}, new, {}, "the cache")
    assert said.endswith("(differs in inputs trl-lib/kto-mix-14k (revision cccccccccccc… there, dddddddddddd… now), max_length (64 there, 128 now))"), said


def test_a_cache_an_earlier_kto_made_with_the_same_command_is_said_so():
    """An upgrade hunter's rerun of the same command on a cache of an earlier release: only the
    rules' wording differed (eval_split, kl_pairing, truncation), and the line showed hashes as
    "a different configuration", with --overwrite as the way out, which strands a run begun on
    the old cache (it resumes only on its own). Now it says an earlier kto made it with these
    settings, and to rebuild into another --out. A setting changed beside it keeps the list."""
    old = _content(truncation="old words", kl_pairing="old pairing", eval_split="old split")
    new = _content(truncation="new words", kl_pairing="new pairing", eval_split="old split")
    said = _difference(old, {}, new, {}, "the cache")
    assert said == (
        "holds the cache that an earlier kto made with these settings, its rules worded otherwise then (kl_pairing, truncation; the rows "
        "may come out the same, but the fingerprint differs); kto-train still reads it, and a run begun on it resumes only on it, "
        "so another --out keeps such runs resumable"
    )
    unfinished = _difference(old, {}, new, {}, "the unfinished run")  # no kto-train reads it: the plain list
    assert unfinished.startswith("holds the unfinished run of a different configuration (differs in kl_pairing (")
    moved = _difference(old, {}, {**new, "max_length": 128}, {}, "the cache")
    assert moved.startswith("holds the cache of a different configuration (differs in kl_pairing (") and "max_length (64 there, 128 now)" in moved
    assert _difference(old, {"batch_tokens": 256}, new, {"batch_tokens": 512}, "the cache").startswith("holds the cache of a different configuration")
