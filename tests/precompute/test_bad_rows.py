"""Rows and models that used to end in a traceback: each is one line naming the row (or flag)."""

from __future__ import annotations

import shutil

from click.testing import CliRunner
from conftest import chat_rows, make_tiny_llama, precompute_args, staging_content, text_rows, write_rows

from kto.precompute.cli import main
from kto.precompute.inputs.records import read_examples


def one_line_error(result) -> str:
    """The error line; transformers' weight-loading progress bar may come before it, nothing after."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("Loading weights")]
    assert len(lines) == 1 and lines[0].startswith("kto-precompute: error: "), result.output
    return lines[0]


def test_chat_rows_for_a_tokenizer_without_a_chat_template(tmp_path, tiny_model_dir):
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink()
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    message = one_line_error(CliRunner().invoke(main, precompute_args(data, model, tmp_path / "out")))
    assert "chat.jsonl: row 1 (id 'chat.jsonl:1')" in message and "no chat template" in message
    assert not (tmp_path / "out").exists()


def test_a_chat_template_that_raises_names_the_row(tmp_path, tiny_model_dir):
    model = tmp_path / "strict-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    rows = chat_rows()
    rows[3]["prompt"] = [{"role": "system", "content": "Be brief."}, *rows[3]["prompt"]]
    data = write_rows(tmp_path / "chat.jsonl", rows)
    message = one_line_error(CliRunner().invoke(main, precompute_args(data, model, tmp_path / "out")))
    assert "chat.jsonl: row 4" in message and "no system turns" in message


def test_a_model_with_fewer_embeddings_than_the_tokenizer_has_tokens(tmp_path, tokenizer_dir):
    model = make_tiny_llama(tmp_path / "small-vocab", tokenizer_dir, vocab_size=1000, num_hidden_layers=1)
    data = write_rows(tmp_path / "text.jsonl", text_rows())
    out = tmp_path / "out"
    message = one_line_error(CliRunner().invoke(main, precompute_args(data, model, out)))
    # Rows are checked in stored (KL-cycle) order: the error names one of the input rows.
    ids = {e.id for e in read_examples([data])}
    assert any(f"row {i!r}: token id" in message for i in ids) and "vocabulary size 1000" in message
    assert not out.exists()  # checked on the model's skeleton before the load: this run's --out removed, as for any bad row


def test_a_row_dropped_at_the_token_boundary_is_named(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from kto.precompute import pipeline
    from kto.precompute.config import PrecomputeConfig
    from kto.precompute.plan import build_splits
    from kto.precompute.templates import ChatTemplate

    data = write_rows(tmp_path / "text.jsonl", text_rows())
    examples = read_examples([data])
    real = pipeline.tokenize_example

    def drop_row_3(example, *a, **kw):
        return None if example.id == "text.jsonl:3" else real(example, *a, **kw)

    monkeypatch.setattr(pipeline, "tokenize_example", drop_row_3)
    cfg = PrecomputeConfig(data=(data,), model=str(tiny_model_dir), out=tmp_path / "out", max_length=64)
    staged = pipeline.stage_rows(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), ChatTemplate(), staging_content(data))
    [split] = build_splits(cfg, staged, None)
    assert split.counts.dropped == 1 and split.counts.rows == len(examples) - 1
    err = capsys.readouterr().err
    assert "dropped 1 rows" in err and "'text.jsonl:3'" in err
