"""Chat-template control: `--chat-template FILE`, `--chat-template-kwargs JSON`, rows' `tools`.

This module loads, checks and fingerprints the options; rows are rendered with them at
tokenization (tokenize.py `render`), once, and only there: kto-train and `kto-inspect score` read
token ids from the cache and never render a template. The cache's tokenizer/ copy is saved with the
template that was used, and the manifest's content records its sha256 (`chat_template`) and the
kwargs (`chat_template_kwargs`), but only when they were given, so a cache made without them
keeps the fingerprint (and shard bytes) it had before these options existed.
`content.tokenizer` stays the identity of `--model`'s own tokenizer: that is what kto-train
compares its `--model` against.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kto.formats.errors import InputError
from kto.formats.files import regular_file, utf8_text
from kto.precompute.inputs.examples import RepeatedKey, one_line, unique_keys

# Set by the tokenizer step itself; a kwargs object may not change how ids are produced.
RESERVED = ("conversation", "tools", "tokenize", "add_generation_prompt", "continue_final_message", "return_dict", "return_tensors", "chat_template")


@dataclass(frozen=True)
class ChatTemplate:
    """How conversational rows are rendered."""

    text: str | None = None
    """Replacement template (the text of --chat-template), or None for the tokenizer's own."""
    path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra variables for the template, e.g. {"enable_thinking": false}."""

    @property
    def name(self) -> str:
        return f"--chat-template {self.path}" if self.path else "the tokenizer's chat template"

    def content(self) -> dict:
        """Fingerprint entries; empty when neither option was given."""
        out: dict[str, Any] = {}
        if self.text is not None:
            out["chat_template"] = hashlib.sha256(self.text.encode()).hexdigest()
        if self.kwargs:
            out["chat_template_kwargs"] = self.kwargs
        return out


def parse_kwargs(value: str | dict | None) -> dict:
    """A JSON object (text from the command line, or a mapping from --config)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            # unique_keys: json keeps the last of a key given twice silently; --config files refuse it.
            value = json.loads(value, object_pairs_hook=unique_keys)
        except RepeatedKey as e:
            raise InputError(f"--chat-template-kwargs {value}: names {e.key!r} twice") from None
        except json.JSONDecodeError as e:
            raise InputError(f"--chat-template-kwargs {value}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(value, dict):
        raise InputError(f"--chat-template-kwargs {json.dumps(value)}: expected a JSON object of template variables")
    taken = sorted(set(value) & set(RESERVED))
    if taken:
        raise InputError(f"--chat-template-kwargs: {', '.join(taken)} set by kto-precompute itself; remove them")
    try:
        # allow_nan=False: NaN and Infinity, which json.loads takes, are no JSON and went into the
        # cache's settings (and its fingerprint) as such.
        json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:  # a --config mapping may hold dates or other non-JSON values
        raise InputError(f"--chat-template-kwargs: values must be JSON ({one_line(e)})") from None
    return value


def load_chat_template(path: Path | None, kwargs: str | dict | None) -> ChatTemplate:
    text = None
    if path is not None:
        regular_file(path, f"--chat-template {path}")
        text = utf8_text(path, f"--chat-template {path}")  # capped: jinja2 parses it whole
        if not text.strip():
            raise InputError(f"--chat-template {path}: empty file")
        _compile(text, path)
    return ChatTemplate(text, None if path is None else str(path), parse_kwargs(kwargs))


def _compile(text: str, path: Path) -> None:
    """Catch a syntax error once, up front, instead of on the first conversational row."""
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise InputError(f"--chat-template {path}: line {e.lineno}: {one_line(e.message)}") from None


def install(tokenizer, template: ChatTemplate) -> None:
    """Make `tokenizer` render with the replacement template (saved with it into tokenizer/)."""
    if template.text is not None:
        tokenizer.chat_template = template.text


# A conversation with one tool call and one tool schema, each named by a marker that no template
# writes by itself: whichever marker is missing from the text, the template leaves that part out.
_PROBE_CALL, _PROBE_TOOL = "kto_probe_call_e3b0", "kto_probe_tool_e3b0"
# One probe per part, each as plain as a conversation gets: a template that refuses one probe's
# shape (Gemma's raise on a `tool` role, which one probe of both parts held) must not be taken
# for one that renders the other part. Gemma 3's rendered a call-only reply as an empty turn.
_PROBE_CALLS = [
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": _PROBE_CALL, "arguments": {"x": 1}}}]},
]
_PROBE_TOOLS = [{"type": "function", "function": {"name": _PROBE_TOOL, "description": "d", "parameters": {"type": "object", "properties": {}}}}]
_UNRENDERED: dict[tuple[str, str], tuple[str, ...]] = {}


def unrendered_tool_parts(tokenizer, template: ChatTemplate) -> tuple[str, ...]:
    """Which of `tool_calls` (an assistant turn's calls) and `tools` (the schemas) the tokenizer's
    chat template leaves out of its text, probed once per template and kwargs.

    SmolLM2's template, for one, reads neither: a LLaMA-Factory function_call turn then renders as
    an empty assistant turn, and a row ending in one trains on a completion of `<|im_end|>` alone."""
    key = (str(tokenizer.chat_template), json.dumps(template.kwargs, sort_keys=True, default=str))
    if key not in _UNRENDERED:
        calls = _probe(tokenizer, _PROBE_CALLS, None, template, _PROBE_CALL)
        tools = _probe(tokenizer, _PROBE_CALLS[:1], _PROBE_TOOLS, template, _PROBE_TOOL)
        _UNRENDERED[key] = tuple(part for part, rendered in (("tool_calls", calls), ("tools", tools)) if not rendered)
    return _UNRENDERED[key]


def _probe(tokenizer, messages: list, tools: list | None, template: ChatTemplate, mark: str) -> bool:
    """Whether `mark` is in the template's rendering of `messages` (with `tools`). A template that
    fails here is taken to render it: it fails on such rows too, naming one."""
    try:
        return mark in tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=tools is not None, **template.kwargs)
    except Exception:  # jinja2 and transformers raise many types
        return True
