"""The cut inside a text of a conversation's prompt (tokenize.py `conversational_ids`), where
dropping whole earliest turns left no prompt that fits --max-prompt-length: one text loses its
start, its turn header and everything after it kept whole, so the prompt still starts with a
header and ends with the generation prompt.

The texts are tried in this order, the first cut that fits is kept:

1. the last user turn's text (at least a token of it kept);
2. the system message's text (the template's own, made an explicit message, where it adds one),
   its header kept, the last turn whole;
3. the later turns' texts (a tool call's, a tool result's): the few largest by tokens
   (`CANDIDATES`, each text tokenized once to rank them; ranked by characters, a prose argument
   was tried in place of a CJK result of four times its tokens) and the longest content by
   characters, the one text tried before arguments were (so no row that cut cleanly then falls
   further now). A text is a message's content or a string value inside a call's arguments
   (a call has no content, and a file it writes is often a trace's longest text). Each try
   renders and tokenizes the whole prompt, and an agent trace has hundreds of turns: the
   others, smaller, would leave less room still;
4. the system text and the last user turn's both (`_cut_both`).

A text the template writes as JSON (`| tojson`, arguments given as JSON text) is cut by whole
characters and rendered again, so the kept text is a whole JSON string in the text's own
escaping (`\\u00e9`, Go's `\\u003c`, `\\/`); so is an argument whose first kept token would
straddle its header (Qwen3 writes a string argument raw after `"arguments": `). Where none fits,
the caller keeps the prompt's last ids, the last resort (`headers_alone` says when no cut could).

Nothing here knows the chat template or the row: `draw` renders messages as the prompt (its
generation prompt included), and the tokenizer's offsets locate a text in that rendering.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kto.formats.errors import InputError
from kto.precompute.inputs.examples import ParsedArguments

Draw = Callable[[Sequence[dict]], str]
"""Messages -> the prompt's text as the chat template renders it, with its generation prompt."""

Within = tuple | None
"""Where a text a cut may shorten lies in a message: None for its content; else (call index,
*keys) for a string inside that tool call's `function.arguments` (keys of objects, indices of
lists; none where the arguments are themselves text)."""

CANDIDATES = 3
"""How many of the later turns' texts are tried, the largest by tokens (rule 3)."""

# A marker that no template changes: private-use code points, which transformers' `tojson`
# (ensure_ascii=False) leaves as they are and `| trim` keeps. A "\x00" marker came out of
# Llama 3.x's `| tojson` of a tool result as "\u0000", was never found, and the cut prompt kept
# only the ids' end (no system block, no tools, no question, no ipython header).
_SENTINEL = "\ue000kto-cut-here\ue001"


def cut_in_texts(kept: tuple, head: int, prompt_ids: list[int], tokenizer: Any, draw: Draw, budget: int) -> list[int] | None:
    """`prompt_ids` (the rendering of `kept`: `head` system messages, the last user turn, the
    turns after it) cut inside one text, or two (the module's rules, in order), to at most
    `budget` ids; None where no cut fits."""
    later = later_texts(kept, head + 1, tokenizer)
    for target, within in [(head, None), *((i, None) for i in range(head)), *later]:
        # The last user turn keeps at least a token of its text (with none, the system text is
        # cut instead); any other text may be cut away whole, its header kept.
        least = 1 if target == head else 0
        cut = _cut_inside(kept, target, prompt_ids, tokenizer, draw, budget, least, within=within)
        if cut is not None:
            return cut
    return _cut_both(kept, 0, prompt_ids, tokenizer, draw, budget) if head and len(kept) > 1 else None


def later_texts(kept: tuple, first: int, tokenizer: Any) -> list[tuple[int, Within]]:
    """(message, within) of the texts of messages `first`… to try (rule 3): the `CANDIDATES`
    largest by tokens, the earliest of equal ones, then the longest content by characters where
    it is not among them. Each text is tokenized once, alone: a rank, not its ids in the prompt."""
    texts = [
        (i, within, text)
        for i in range(first, len(kept))
        for within, text in ((None, kept[i].get("content")), *_argument_texts(kept[i]))
        if isinstance(text, str) and text.strip()
    ]
    if not texts:
        return []
    sizes = [len(ids) for ids in tokenizer([text for *_, text in texts], add_special_tokens=False).input_ids]
    picks = sorted(range(len(texts)), key=lambda k: (-sizes[k], k))[:CANDIDATES]
    contents = [k for k, (_, within, _) in enumerate(texts) if within is None]
    longest = max(contents, key=lambda k: (len(texts[k][2]), -k), default=None)
    picks += [longest] if longest is not None and longest not in picks else []
    return [texts[k][:2] for k in picks]


def headers_alone(kept: tuple, tokenizer: Any, draw: Draw) -> int:
    """The ids of `kept`'s rendering with every text a cut may shorten left out (contents and
    the strings inside calls' arguments): the least any cut keeps. 0 where that renders not."""
    messages = [dict(m) for m in kept]
    for i, message in enumerate(kept):
        if isinstance(message.get("content"), str):
            messages[i]["content"] = ""
        for within, _ in _argument_texts(message):
            messages = _with_text(messages, i, within, "")
    try:
        return len(tokenizer(draw(messages), add_special_tokens=False).input_ids)
    except InputError:
        return 0


def template_system(messages: tuple, draw: Draw) -> tuple:
    """The system message the template renders by itself before `messages` (which have none), as
    an explicit message that renders the same text: (message,) or (). Without it, a prompt that
    only this message left no room was cut keeping the ids' end, starting inside its text with
    no header. Its text is what lies between a sentinel system message's header and the rest; a
    template with no such message (Llama-3's, an empty system block), one that refuses a system
    message (Gemma's) or puts its text inside a user turn (Mistral's) gives ()."""
    if not messages or messages[0].get("role") == "system":
        return ()
    try:
        text = draw(messages)
        parts = draw(({"role": "system", "content": _SENTINEL}, *messages)).split(_SENTINEL)
    except InputError:
        return ()
    if len(parts) != 2 or len(text) < len(parts[0]) + len(parts[1]) or not (text.startswith(parts[0]) and text.endswith(parts[1])):
        return ()
    system = {"role": "system", "content": text[len(parts[0]) : len(text) - len(parts[1])]}
    if not system["content"].strip():
        return ()
    # Cut as an explicit message only where one renders exactly as the template's own: the ids
    # the cut keeps are then the prompt's own.
    return (system,) if draw((system, *messages)) == text else ()


def _argument_texts(message: dict) -> Iterator[tuple[tuple, str]]:
    """(within, text) for every string inside `message`'s tool calls' arguments (`Within`)."""
    calls = message.get("tool_calls")
    for c, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            yield from _strings_at(function.get("arguments"), (c,))


def _strings_at(value: Any, where: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, v in value.items():
            yield from _strings_at(v, (*where, key))
    elif isinstance(value, list):
        for index, v in enumerate(value):
            yield from _strings_at(v, (*where, index))


def _text_of(message: dict, within: Within) -> Any:
    """The text at `within` in `message` (its content for None); None where there is no string."""
    if within is None:
        return message.get("content")
    return _value_at(message["tool_calls"][within[0]]["function"]["arguments"], within[1:])


def _value_at(value: Any, keys: tuple) -> Any:
    for key in keys:
        value = value[key]
    return value


def _with_text(kept: Sequence[dict], target: int, within: Within, text: str) -> list[dict]:
    """A copy of `kept` with message `target`'s text at `within` replaced by `text` (the input's
    messages are not changed)."""
    messages = [dict(m) for m in kept]
    if within is None:
        messages[target]["content"] = text
        return messages
    calls = list(messages[target]["tool_calls"])
    call = calls[within[0]]
    arguments = _arguments_with(call["function"]["arguments"], within[1:], text)
    calls[within[0]] = {**call, "function": {**call["function"], "arguments": arguments}}
    messages[target]["tool_calls"] = calls
    return messages


def _arguments_with(arguments: Any, keys: tuple, text: str) -> Any:
    """`arguments` with the string at `keys` replaced by `text`. Arguments parsed from JSON text
    (ParsedArguments) get their text changed the same way, so a template that joins arguments as
    text (DeepSeek-R1's) renders the same cut: the value's span in the text (found by scanning
    it as JSON) is replaced by the new value written in the old one's own escaping
    (`_written_like`: json.dumps's `\\u00e9`, Go's `\\u003c`, `\\/`), every other character of
    the text kept; where the old value's escaping cannot be read back (one character written two
    ways), the object is written anew by json.dumps (ensure_ascii=False, its default spacing)."""
    if not keys:
        return text
    replaced = _set_at(arguments, keys, text)
    if not isinstance(arguments, ParsedArguments):
        return replaced
    parsed = ParsedArguments(replaced)
    parsed.text = json.dumps(replaced, ensure_ascii=False)
    span, escape = _span_at(arguments.text, keys), _own_escape(arguments, keys)
    if span is not None and escape is not None:
        # The cut marker, a private-use code point, must stay itself to be found.
        new = '"' + escape(text).replace(escape(_SENTINEL), _SENTINEL) + '"'
        candidate = arguments.text[: span[0]] + new + arguments.text[span[1] :]
        with contextlib.suppress(ValueError):
            if json.loads(candidate) == replaced:
                parsed.text = candidate
    return parsed


def _set_at(value: Any, keys: tuple, text: str) -> Any:
    """A copy of `value` (objects and lists) with the string at `keys` replaced by `text`."""
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[keys[0]] = _set_at(value[keys[0]], keys[1:], text) if len(keys) > 1 else text
    return copy


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _span_at(text: str, keys: tuple) -> tuple[int, int] | None:
    """[start, end) of the JSON value at `keys` in the JSON `text` (a string's quotes included);
    None where it is not there."""
    try:
        at = _SPACE.match(text).end()
        for key in keys:
            at = _member_at(text, at, key)
            if at is None:
                return None
        return at, _DECODER.raw_decode(text, at)[1]
    except (ValueError, IndexError):
        return None


def _member_at(text: str, at: int, key: str | int) -> int | None:
    """Where the value of `key` (an object's key, a list's index) of the JSON value at `at` starts."""
    opening = text[at]
    if opening not in "{[":
        return None
    at, index = _SPACE.match(text, at + 1).end(), 0
    while text[at] not in "}]":
        if opening == "{":
            name, at = json.decoder.scanstring(text, at + 1)
            at = _SPACE.match(text, _SPACE.match(text, at).end() + 1).end()  # past the colon
            found = name == key
        else:
            found = index == key
        if found:
            return at
        at = _SPACE.match(text, _DECODER.raw_decode(text, at)[1]).end()
        at = _SPACE.match(text, at + 1).end() if text[at] == "," else at
        index += 1
    return None


# One character of a JSON string as written: an escaped surrogate pair, an escape, or itself.
_UNIT = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\.|.", re.DOTALL)


def _own_escape(arguments: Any, keys: tuple) -> Callable[[str], str] | None:
    """How the JSON text of `arguments` (ParsedArguments) writes the string at `keys`, as an
    escape function (`_written_like`); None for arguments not parsed from text, or a value
    whose escaping cannot be read back."""
    if not isinstance(arguments, ParsedArguments) or not keys:
        return None
    span = _span_at(arguments.text, keys)
    value = _value_at(arguments, keys)
    if span is None or not isinstance(value, str):
        return None
    return _written_like(arguments.text[span[0] + 1 : span[1] - 1], value)


def _written_like(raw: str, value: str) -> Callable[[str], str] | None:
    """An escape that writes each character of `value` as `raw` (its JSON string, quotes left
    out) writes it, any other as `_json_escaped` does; None where one character is written two
    ways. Python's json.dumps, transformers' `tojson`, Go's (`<` as `\\u003c`) and Java's (`/`
    as `\\/`) encoders each write a character one way."""
    units = _UNIT.findall(raw)
    if len(units) != len(value):
        return None
    written: dict[str, str] = {}
    for unit, char in zip(units, value, strict=True):
        if written.setdefault(char, unit) != unit or (len(unit) > 1 and json.loads(f'"{unit}"') != char):
            return None
    for usual in (_json_escaped, _ascii_escaped):  # the usual cases, at C speed
        if all(unit == usual(char) for char, unit in written.items()):
            return usual
    return lambda text: "".join(written.get(c) or _json_escaped(c) for c in text)


def _json_escaped(text: str) -> str:
    """`text` as transformers' `tojson` writes it inside its quotes (ensure_ascii=False)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _ascii_escaped(text: str) -> str:
    """`text` as Python's json.dumps writes it inside its quotes by default (ensure_ascii=True)."""
    return json.dumps(text)[1:-1]


def _unescaped(text: str) -> str:
    """`text` as a template that writes it raw renders it (Qwen3's string arguments)."""
    return text


def _cut_inside(
    kept: tuple, target: int, prompt_ids: list[int], tokenizer: Any, draw: Draw, budget: int, least: int, *, within: Within = None
) -> list[int] | None:
    """`prompt_ids` (the rendering of `kept`) with message `target`'s text (its content, or the
    string at `within` in its tool calls' arguments) cut to its end, its turn header before it
    and everything after it (the generation prompt) kept whole: `budget` ids in all. None when
    the text's tokens cannot be located (the template changes the text, no fast tokenizer) or
    the rest leaves fewer than `least` of them: the caller tries another text, then keeps the
    ids' end."""
    located = _locate_text(kept, target, prompt_ids, tokenizer, draw, within)
    if located is None:
        return None
    (ids, offsets, first, after), parts, shown, escape = located
    content = _text_of(kept[target], within)
    room = budget - first - (len(ids) - after)
    # room 0 keeps the header with no text: a Llama 3.2 prompt whose budget left its system text
    # exactly nothing otherwise fell to the ids' end, which starts inside that text, headerless.
    if room < least or room >= after - first:
        return None
    # Written as JSON (`| tojson`): ids cut anywhere could split an escape (`\"`, `\u0001`), or
    # take the opening quote with a text's first token (`"[` is one token) where nothing needed
    # escaping, so it is cut by characters and rendered again. So is an argument whose header's
    # last token takes the value's first characters too (Qwen3's `Ġpath` after `"arguments":`):
    # kept as the header's, it was followed by the value's end, no rendering of any conversation.
    quoted = parts[0].endswith('"') and parts[1].startswith('"')
    straddled = within is not None and first > 0 and offsets[first - 1][1] > len(parts[0])
    escape = escape or (_unescaped if straddled and shown == content else None)
    if escape is not None and (shown != content or quoted or straddled):
        b = len(parts[0]) + len(shown)
        start = _escaped_suffix(content, b - offsets[after - room][0] if room else 0, escape)
        return _rendered_cut((kept, target, within), start, tokenizer, draw, parts, offsets[-1][1] - b, budget, escape)
    return ids[:first] + ids[after - room : after] + ids[after:]


def _locate_text(
    kept: tuple, target: int, prompt_ids: list[int], tokenizer: Any, draw: Draw, within: Within = None
) -> tuple[tuple[list[int], list, int, int], list[str], str, Callable[[str], str] | None] | None:
    """Where message `target`'s text (at `within`) lies in `prompt_ids` (the rendering of
    `kept`): its `_text_span`, the rendering split around the text, the text as rendered, and
    the escape that writes it so (None for the text itself, or trimmed). None for an empty text,
    or one whose tokens cannot be located (the template changes the text, no fast tokenizer)."""
    content = _text_of(kept[target], within) if target < len(kept) else None
    if not isinstance(content, str) or not content.strip():
        return None
    text, parts = draw(kept), draw(_with_text(kept, target, within, _SENTINEL)).split(_SENTINEL)
    if len(parts) != 2:
        return None
    # The text as rendered: itself; stripped, by a template's `| trim` (Llama-3's, Gemma's,
    # Mistral's); or JSON-escaped in quotes, by `| tojson` (Llama 3.x's tool results); or, for
    # arguments given as JSON text that a template joins as text, in that text's own escaping
    # (Python's json.dumps writes "é" as "\u00e9", Go's "<" as "\u003c").
    own = _own_escape(kept[target]["tool_calls"][within[0]]["function"]["arguments"], within[1:]) if within else None
    escapes = [e for e in (_json_escaped, _ascii_escaped, own) if e is not None]
    forms = (content, content.strip(), *(e(content) for e in escapes))
    shown = next((c for c in forms if len(parts[0]) + len(c) + len(parts[1]) == len(text) and parts[0] + c + parts[1] == text), None)
    escape = None if shown is None else next((e for e in escapes if e(content) == shown), None)
    span = None if shown is None else _text_span(tokenizer, text, prompt_ids, len(parts[0]), len(parts[0]) + len(shown))
    return None if span is None else (span, parts, shown, escape)


def _cut_both(kept: tuple, system: int, prompt_ids: list[int], tokenizer: Any, draw: Draw, budget: int) -> list[int] | None:
    """`prompt_ids` with the system text (message `system`) and the last user turn's text (the
    next message) both cut to their ends, each header kept: the system text to half the room the
    two texts have (no more than it has), the user's to the rest, at least a token of it. For a
    prompt where neither cut alone fits; None where the texts cannot be located, or one is
    JSON-escaped (`_cut_inside` renders such a text again; here it falls to the last resort)."""
    spans = []
    for target in (system, system + 1):
        located = _locate_text(kept, target, prompt_ids, tokenizer, draw)
        if located is None or located[2] not in (kept[target]["content"], kept[target]["content"].strip()):
            return None
        spans.append(located[0][2:])
    ids = list(prompt_ids)
    (s_first, s_after), (u_first, u_after) = spans
    room = budget - (len(ids) - (s_after - s_first) - (u_after - u_first))
    keep_system = min(s_after - s_first, room // 2)
    keep_user = min(u_after - u_first, room - keep_system)
    if keep_user < 1 or s_after > u_first:
        return None
    return ids[:s_first] + ids[s_after - keep_system : s_after] + ids[s_after:u_first] + ids[u_after - keep_user : u_after] + ids[u_after:]


def _escaped_suffix(text: str, width: int, escape: Callable[[str], str] = _json_escaped) -> int:
    """Where the longest end of `text` whose escaped form has at most `width` characters starts."""
    start = len(text)
    while start > 0 and width >= len(escape(text[start - 1])):
        start, width = start - 1, width - len(escape(text[start - 1]))
    return start


def _token_span(offsets: Sequence, a: int, b: int) -> tuple[int, int]:
    """[first, after): the tokens of the characters [a, b). A token that straddles the end
    boundary counts as the text's: what is kept of the generation prompt is then exactly its own
    tokens. One that straddles the start counts as the header's, so a cut never takes a
    character of the header: SmolLM2 writes "\\n " as one token (ĊĠ), and a user text starting
    with a space lost the header's newline with it ('<|im_start|>userolor sit…')."""
    first = next((i for i, (_, end) in enumerate(offsets) if end > a), len(offsets))
    if first < len(offsets) and offsets[first][0] < a:
        first += 1
    after = next((i for i in range(first, len(offsets)) if offsets[i][0] >= b and offsets[i][1] > offsets[i][0]), len(offsets))
    return first, after


def _text_span(tokenizer: Any, text: str, prompt_ids: list[int], a: int, b: int) -> tuple[list[int], list, int, int] | None:
    """(ids, offsets, first, after): `text` tokenized, `prompt_ids` long, and the span of the
    characters [a, b) (`_token_span`). None without offsets (a slow tokenizer) or where the ids
    are not `prompt_ids`."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer has no offsets
        return None
    ids, offsets = list(enc.input_ids[: len(prompt_ids)]), enc.offset_mapping[: len(prompt_ids)]
    if ids != list(prompt_ids):
        return None
    return ids, offsets, *_token_span(offsets, a, b)


def _rendered_cut(
    at: tuple[tuple, int, Within], start: int, tokenizer: Any, draw: Draw, parts: list[str], rest: int, budget: int, escape: Callable[[str], str]
) -> list[int] | None:
    """The text `at` (kept messages, message, within), which the template writes by `escape`
    (JSON-escaped, or raw behind a straddling token), cut to its end from character `start` and
    rendered again: the kept text is then a whole JSON string (a call's arguments stay JSON),
    where ids cut in place could start inside an escape, and the ids are the new rendering's
    own. They are its ids up to `rest` characters after the text (where the prompt's ids ended:
    a prefix split ends them before the generation prompt's end); a boundary token that came
    out longer drops a character more, until they fit `budget`."""
    kept, target, within = at
    content = _text_of(kept[target], within)
    while True:
        text, escaped = draw(_with_text(kept, target, within, content[start:])), escape(content[start:])
        if text != parts[0] + escaped + parts[1]:  # the template renders this text otherwise
            return None
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        end = len(parts[0]) + len(escaped) + rest
        ids = [i for i, (_, stop) in zip(enc.input_ids, enc.offset_mapping) if stop <= end]
        if len(ids) <= budget:
            return ids
        if start == len(content):
            return None
        start = min(len(content), start + len(ids) - budget)
