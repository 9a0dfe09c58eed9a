"""--eval-cache made with another tokenizer, or rendered with other --chat-template-kwargs, than
--cache: refused before --out is touched (README: it must come from the same model, tokenizer,
numerics and chat template), since its prompts were tokenized or rendered otherwise than the
rows training scores."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner
from conftest import text_rows, train_error_line, write_rows
from test_loop import train_cli


def precompute_held_out(tmp_path, model, name: str, *extra: str):
    from kto.precompute.cli import main as precompute

    data = write_rows(tmp_path / "held.jsonl", text_rows())
    out = tmp_path / name
    args = ["--data", str(data), "--model", str(model), "--out", str(out), "--rows-per-shard", "5", "--batch-tokens", "256", "--max-length", "64", *extra]
    result = CliRunner().invoke(precompute, args)
    assert result.exit_code == 0, result.output
    return out


def refused_as_other(part: str, tiny_cache, tiny_model_dir, held, out) -> None:
    result = train_cli(tiny_cache, tiny_model_dir, out, "--max-steps", "1", "--eval-cache", str(held))
    assert result.exit_code == 2, result.output
    assert train_error_line(result.output) == f"kto-train: error: --eval-cache {held}: made with another {part} than --cache {tiny_cache}"
    assert not out.exists()


def test_an_eval_cache_made_with_another_tokenizer_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    """The same weights (a copy: the model identity leaves paths out), a tokenizer whose
    pipeline lowercases the text: other token ids for the same words."""
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Lowercase"}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    held = precompute_held_out(tmp_path, other, "held-lower")
    refused_as_other("tokenizer", tiny_cache, tiny_model_dir, held, tmp_path / "r")


def test_an_eval_cache_rendered_with_other_template_kwargs_is_refused(tiny_cache, tiny_model_dir, tmp_path):
    held = precompute_held_out(tmp_path, tiny_model_dir, "held-kwargs", "--chat-template-kwargs", '{"enable_thinking": false}')
    refused_as_other("chat template", tiny_cache, tiny_model_dir, held, tmp_path / "r")


def test_the_same_making_is_accepted(tiny_cache, tiny_model_dir, tmp_path):
    held = precompute_held_out(tmp_path, tiny_model_dir, "held")
    result = train_cli(tiny_cache, tiny_model_dir, tmp_path / "r", "--max-steps", "1", "--eval-cache", str(held))
    assert result.exit_code == 0, result.output
