"""--eval-cache must hold rows the policy does not train on. The training cache itself, or a
copy of it, used to be accepted with no word: the eval numbers then measured the training rows."""

from __future__ import annotations

import json
import shutil

from conftest import train_error_line
from test_loop import train_cli


def test_training_cache_as_eval_cache_is_refused_before_out(tiny_cache, tiny_model_dir, tmp_path):
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--eval-cache", str(tiny_cache))
    assert result.exit_code == 2, result.output
    fingerprint = json.loads((tiny_cache / "manifest.json").read_text())["fingerprint"]
    assert train_error_line(result.output) == (
        f"kto-train: error: --eval-cache {tiny_cache}: the same rows as --cache {tiny_cache} (same fingerprint {fingerprint[:16]}…); "
        "evaluate on a held-out split such as CACHE/eval"
    )
    assert not (tmp_path / "r").exists()


def test_a_copy_of_the_training_cache_is_refused_too(tiny_cache, tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_cache, tmp_path / "copy")
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--eval-cache", str(copy))
    assert result.exit_code == 2 and "the same rows as --cache" in train_error_line(result.output)


def test_an_eval_cache_sharing_one_training_shard_is_refused(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    """A shard's bytes carry its cache's fingerprint and rows: one shared sha256 is shared rows."""
    mixed = shutil.copytree(tiny_eval_cache, tmp_path / "mixed")
    manifest = json.loads((mixed / "manifest.json").read_text())
    train = json.loads((tiny_cache / "manifest.json").read_text())
    shutil.copy(tiny_cache / "shard-00002.arrow", mixed / "shard-00002.arrow")
    manifest["shards"][2] = train["shards"][2]  # name, rows and sha256 of the training shard
    manifest["counts"]["rows"] = sum(s["rows"] for s in manifest["shards"])
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--eval-cache", str(mixed))
    assert result.exit_code == 2, result.output
    assert f"--eval-cache {mixed}: its shard-00002.arrow is --cache {tiny_cache}'s shard-00002.arrow (same sha256)" in train_error_line(result.output)


def test_a_held_out_cache_of_the_same_model_is_accepted(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--eval-cache", str(tiny_eval_cache))
    assert result.exit_code == 0, result.output


def test_the_eval_split_of_another_cache_of_the_same_file_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    """Seen in an attack: the same file precomputed again with --seed 1 and --eval-fraction held
    out rows that --cache trains on; its eval/ was accepted (another fingerprint, other shards)
    and reported eval metrics on training rows. The same input (sha256) and id is the same row."""
    from click.testing import CliRunner
    from conftest import chat_rows, precompute_args, write_rows

    from kto.precompute.cli import main as precompute

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())  # the bytes tiny_cache was made from
    other = tmp_path / "seed1"
    made = CliRunner().invoke(precompute, precompute_args(data, tiny_model_dir, other, "--seed", "1", "--eval-fraction", "0.25"))
    assert made.exit_code == 0, made.output
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--eval-cache", str(other / "eval"))
    assert result.exit_code == 2 and not (tmp_path / "r").exists()
    assert train_error_line(result.output).startswith(
        f"kto-train: error: --eval-cache {other / 'eval'}: 4 of its rows are training rows of --cache {tiny_cache} (the same input file and id, e.g. 'chat.jsonl:"
    ), result.output


def test_an_eval_cache_scored_in_another_dtype_or_template_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    """A bf16 eval cache beside an fp32 --cache put the reference's rounding into every eval reward
    (KL −1.1e-3 one step from the reference), and another chat template scores prompts rendered
    as training never saw them: both were accepted without a word. Other length limits are said."""
    from click.testing import CliRunner
    from conftest import text_rows, write_rows

    from kto.precompute.cli import main as precompute

    data = write_rows(tmp_path / "held.jsonl", text_rows())
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    made = {}
    for name, extra in {"bf16": ("--dtype", "bf16"), "template": ("--chat-template", str(template)), "short": ("--max-length", "48")}.items():
        args = ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(tmp_path / name), "--rows-per-shard", "5", "--batch-tokens", "256"]
        args += ["--max-length", "64", *extra] if name != "short" else list(extra)
        result = CliRunner().invoke(precompute, args)
        assert result.exit_code == 0, result.output
        made[name] = tmp_path / name
    for name, part in (("bf16", "dtype"), ("template", "chat template")):
        result = train_cli(tiny_cache, tiny_model_dir, tmp_path / f"r-{name}", "--max-steps", "1", "--eval-cache", str(made[name]))
        assert result.exit_code == 2, result.output
        assert train_error_line(result.output) == f"kto-train: error: --eval-cache {made[name]}: made with another {part} than --cache {tiny_cache}"
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r-short", "--max-steps", "1", "--eval-cache", str(made["short"]))
    assert result.exit_code == 0, result.output
    assert (
        f"note: --eval-cache {made['short']} was made with other length limits (max_length 48 there, 64 in --cache; max_prompt_length 24 there, 32 in --cache)"
        in result.output
    )


def test_a_resume_that_adds_an_eval_cache_names_the_flag(tiny_cache, tiny_eval_cache, tiny_model_dir, tmp_path):
    """Adding or dropping --eval-cache on resume was refused (its fingerprint was the run's),
    though evaluation changes no training number: it is now taken, and the resume's line of
    changes names the flag (tests/train/test_resume_eval_changes.py has the rest)."""
    run = tmp_path / "r"
    first = train_cli(tiny_cache, tiny_model_dir, run, "--max-steps", "2", "--save-every", "1")
    assert first.exit_code == 0, first.output
    shutil.rmtree(run / "final")
    again = train_cli(tiny_cache, tiny_model_dir, run, "--max-steps", "2", "--save-every", "1", "--resume", "--eval-cache", str(tiny_eval_cache))
    assert again.exit_code == 0, again.output
    assert f"--resume: changed --eval-cache None -> {tiny_eval_cache}" in again.output


def test_an_eval_cache_of_the_training_rows_under_other_names_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    """The training file renamed, or its rows written out again, precomputed into an eval cache:
    other input sha256 and ids, the same rows. All shared is refused; some is warned of."""
    from click.testing import CliRunner
    from conftest import chat_rows, precompute_args, text_rows, write_rows

    from kto.precompute.cli import main as precompute

    renamed = write_rows(tmp_path / "renamed.jsonl", chat_rows())  # the rows tiny_cache was made from
    some = write_rows(tmp_path / "some.jsonl", [*chat_rows()[:2], *text_rows()])
    for data in (renamed, some):
        made = CliRunner().invoke(precompute, precompute_args(data, tiny_model_dir, tmp_path / data.stem))
        assert made.exit_code == 0, made.output
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r1", "--max-steps", "1", "--eval-cache", str(tmp_path / "renamed"))
    assert result.exit_code == 2, result.output
    assert "of its 16 distinct rows are --cache" in train_error_line(result.output) and "16 of its 16" in train_error_line(result.output)
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r2", "--max-steps", "1", "--eval-cache", str(tmp_path / "some"))
    assert result.exit_code == 0, result.output
    assert f"warning: --eval-cache {tmp_path / 'some'}: 2 of its 18 distinct rows are --cache {tiny_cache} rows" in result.output
