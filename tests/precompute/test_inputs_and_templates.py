"""kto-precompute with ShareGPT rows, datasets inputs, chat-template control, --config and the
staging file, end to end on the tiny Llama."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from click.testing import CliRunner
from conftest import chat_rows, precompute_args, write_rows

from kto.formats import schema as S
from kto.formats.manifest import read_manifest
from kto.precompute.cli import main

# A template that shows tools and a kwarg in the prompt, so their effect is visible in the ids.
TEMPLATE = (
    "{% if think %}/think\n{% endif %}"
    "{% if tools %}<|im_start|>system\nTools: {{ tools | map(attribute='function') | map(attribute='name') | join(',') }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def run(*args):
    return CliRunner().invoke(main, list(args))


def rows_of(out):
    tables = [ipc.open_file(pa.memory_map(str(p))).read_all() for p in sorted(out.glob(S.SHARD_GLOB))]
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables]).to_pylist()


def sharegpt_rows():
    tools = json.dumps([{"type": "function", "function": {"name": "lookup", "parameters": {}}}])
    out = []
    for i, (q, good, bad) in enumerate([("Capital of France?", "Paris.", "Rome."), ("Legs of a spider?", "Eight.", "Three."), ("7 times 8?", "56.", "78.")]):
        out.append(
            {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": good}], "kto_tag": True, "system": "Answer briefly.", "tools": tools}
        )
        out.append(
            {
                "conversations": [{"from": "human", "value": q}],
                "chosen": {"from": "gpt", "value": good},
                "rejected": {"from": "gpt", "value": bad},
                "id": f"pair{i}",
            }
        )
    return out


def test_sharegpt_rows_with_template_file_and_kwargs(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from kto.formats.compute.loading import load_tokenizer
    from kto.formats.compute.sources import ModelSource
    from kto.formats.compute.tokenizer_check import require_cache_tokenizer

    data = write_rows(tmp_path / "sg.jsonl", sharegpt_rows())
    (tmp_path / "t.jinja").write_text(TEMPLATE)
    out = tmp_path / "c"
    result = run(*precompute_args(data, tiny_model_dir, out, "--chat-template", str(tmp_path / "t.jinja"), "--chat-template-kwargs", '{"think": false}'))
    assert result.exit_code == 0, result.output
    tok = AutoTokenizer.from_pretrained(out / S.TOKENIZER_DIR)
    assert tok.chat_template == TEMPLATE  # the cache's tokenizer carries the template used
    # Rows are stored in KL-cycle order; find them by id.
    by_id = {r["id"]: r for r in rows_of(out)}
    assert {"sg.jsonl:1", "pair0:chosen", "pair0:rejected"} <= set(by_id)
    first = tok.decode(by_id["sg.jsonl:1"]["prompt_ids"])
    assert first.startswith("<|im_start|>system\nTools: lookup<|im_end|>\n<|im_start|>system\nAnswer briefly.")
    assert first.endswith("<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(by_id["sg.jsonl:1"]["completion_ids"]) == "Paris.<|im_end|>\n"
    content = read_manifest(out).content
    assert content.chat_template_kwargs == {"think": False} and len(content.chat_template) == 64
    # kto-train checks --model against the model's own tokenizer, which the template did not change.
    require_cache_tokenizer(load_tokenizer(ModelSource(tiny_model_dir)), content.tokenizer, "m")
    from kto.inspection.verify import verify

    assert all(r.ok for r in verify(out)), [r.problems for r in verify(out)]
    # Other kwargs render other ids and give another fingerprint.
    other = tmp_path / "c2"
    assert (
        run(*precompute_args(data, tiny_model_dir, other, "--chat-template", str(tmp_path / "t.jinja"), "--chat-template-kwargs", '{"think": true}')).exit_code
        == 0
    )
    assert tok.decode({r["id"]: r for r in rows_of(other)}["sg.jsonl:1"]["prompt_ids"]) == "/think\n" + first
    assert read_manifest(other).fingerprint != read_manifest(out).fingerprint


def test_save_to_disk_copy_gives_the_same_numbers(tmp_path, tiny_model_dir, tiny_cache):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(chat_rows()).save_to_disk(str(tmp_path / "chat"))
    out = tmp_path / "c"
    result = run(*precompute_args(tmp_path / "chat", tiny_model_dir, out))
    assert result.exit_code == 0, result.output
    ours, files = rows_of(out), rows_of(tiny_cache)
    # The same rows in the same (KL-cycle) order: pairing depends on texts and lengths, not names.
    assert [r["id"].split(":", 1)[1] for r in ours] == [r["id"].split(":", 1)[1] for r in files]
    for a, b in zip(ours, files):
        assert (a["prompt_ids"], a["completion_ids"], a["ref_logp"]) == (b["prompt_ids"], b["completion_ids"], b["ref_logp"])
    assert read_manifest(out).content.inputs[0]["name"] == "chat"


def test_config_file_keys_are_flags_and_flags_win(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"data: {data}\nmodel: {tiny_model_dir}\nout: {tmp_path / 'c'}\nmax-length: '64'\nrows_per_shard: 8\nseed: 5\nchat_template_kwargs: {{flag: 1}}\n"
    )
    result = run("--config", str(cfg), "--seed", "2")
    assert result.exit_code == 0, result.output
    m = read_manifest(tmp_path / "c")
    assert (m.content.seed, m.content.max_length, m.layout["rows_per_shard"]) == (2, 64, 8)
    assert m.content.chat_template_kwargs == {"flag": 1}
    toml = tmp_path / "p.toml"
    toml.write_text('max_length = "many"\n')
    bad = run("--config", str(toml), *precompute_args(data, tiny_model_dir, tmp_path / "d"))
    assert bad.exit_code == 2 and "--config" in bad.output and "max_length" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_staging_is_reused_by_a_resumed_run_and_removed_when_done(tmp_path, tiny_model_dir, tiny_cache, monkeypatch):
    from kto.precompute import pipeline

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    out = tmp_path / "c"

    def crash(*a, **k):
        raise RuntimeError("killed after staging")

    monkeypatch.setattr(pipeline, "load_completion_logps", crash)
    with pytest.raises(RuntimeError):
        CliRunner().invoke(main, precompute_args(data, tiny_model_dir, out), catch_exceptions=False)
    [staged] = out.glob(".staging-*.arrow")
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "tokenize_example", crash)  # the resumed run must not tokenize
    result = run(*precompute_args(data, tiny_model_dir, out))
    assert result.exit_code == 0, result.output
    assert not staged.exists() and not list(out.glob(".staging-*"))
    for name in sorted(p.name for p in tiny_cache.glob(S.SHARD_GLOB)):
        assert (out / name).read_bytes() == (tiny_cache / name).read_bytes(), name
    assert read_manifest(out).fingerprint == read_manifest(tiny_cache).fingerprint


def test_bad_input_gets_one_line_and_writes_nothing(tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m['content'] | int(strict) }}{{ raise_exception('no ' + m['role']) if m['role'] == 'assistant' }}{% endfor %}")
    tools = write_rows(tmp_path / "tools.jsonl", [{**chat_rows()[0], "tools": "lookup"}, chat_rows()[1]])
    cases = [
        (["--data", "hf:kto-offline-tests/no-such-dataset-7f3a:train"], "unknown dataset id"),
        (["--data", f"hf:{tmp_path}:nope"], "no split 'nope'"),
        (["--data", str(data), "--chat-template", str(broken)], "chat.jsonl: row 1 (id 'chat.jsonl:1'): --chat-template"),
        (["--data", str(data), "--chat-template-kwargs", "{think: no}"], "--chat-template-kwargs {think: no}: not JSON"),
        (["--data", str(tools)], "tools.jsonl: row 1: column 'tools': text that is not JSON"),
    ]
    for i, (args, expect) in enumerate(cases):
        out = tmp_path / f"out{i}"
        result = run(*args, "--model", str(tiny_model_dir), "--out", str(out), "--max-length", "64")
        assert result.exit_code == 2 and expect in result.output, (expect, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()
    shutil.rmtree(tmp_path / "out0", ignore_errors=True)


def test_sharegpt_names_and_columns_from_config_and_flags(tmp_path):
    from kto.precompute.cli import config_from

    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text("sharegpt_info: {columns: {kto_tag: good}, tags: {user_tag: person}}\nsystem_column: sys\ndata: [a.jsonl, 'hf:org/set:train']\n")
    ctx = main.make_context("kto-precompute", ["--config", str(cfg_file), "--model", "m", "--out", str(tmp_path / "o"), "--tools-column", "fns"])
    cfg = config_from(ctx, ctx.params.pop("config_file"), ctx.params)
    assert (cfg.sharegpt.kto_tag, cfg.sharegpt.user_tag, cfg.sharegpt.system, cfg.sharegpt.tools) == ("good", "person", "sys", "fns")
    assert [str(p) for p in cfg.data] == ["a.jsonl", "hf:org/set:train"]


def test_a_template_that_closes_the_turn_without_eos_is_warned_about(tmp_path, tiny_model_dir):
    """A chat row's completion ends as the template renders the assistant's turn. A template
    that leaves out the EOS token there teaches the policy never to stop: told in one line.
    SmolLM2's own template closes the turn with <|im_end|>, its EOS: no warning. A stop id of
    the model's generation_config.json counts as well (Llama-3 instruct's <|eot_id|>)."""
    from transformers import AutoTokenizer

    from kto.precompute.tokenize import stop_ids

    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    (tmp_path / "t.jinja").write_text(
        "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}### assistant:\n{% endif %}"
    )
    warned = run(*precompute_args(data, tiny_model_dir, tmp_path / "c1", "--chat-template", str(tmp_path / "t.jinja")))
    assert warned.exit_code == 0, warned.output
    n = len(chat_rows())
    assert f"warning: {n} of {n} completions never reach the EOS token '<|im_end|>'" in warned.output
    own = run(*precompute_args(data, tiny_model_dir, tmp_path / "c2"))
    assert own.exit_code == 0 and "EOS" not in own.output
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = tmp_path / "m"
    model.mkdir()
    assert stop_ids(tok, model) == {tok.eos_token_id}
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.eos_token_id, 7]}))
    assert stop_ids(tok, model) == {tok.eos_token_id, 7}


def test_a_template_that_renders_the_prompt_after_the_reply_is_refused(tmp_path, tiny_model_dir):
    """Seen in an attack: a template rendering messages in reverse put every row's user turn
    into its completion (prompt '<', completion 'assistant>…</assistant><user>question</user>'),
    noted in one line, cache written. Now refused, naming the row, and nothing written."""
    data = write_rows(tmp_path / "chat.jsonl", chat_rows())
    (tmp_path / "t.jinja").write_text(
        "{% for m in messages|reverse %}<{{m.role}}>{{m.content}}</{{m.role}}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    result = run(*precompute_args(data, tiny_model_dir, tmp_path / "c", "--chat-template", str(tmp_path / "t.jinja")))
    assert result.exit_code == 2, result.output
    assert "error: chat.jsonl: row 1 (id 'chat.jsonl:1'): the chat template does not render the prompt as the start of the conversation" in result.output
    assert not (tmp_path / "c").exists()
