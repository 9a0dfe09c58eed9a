"""kto-inspect rows: pick rows with an SQL condition, show their text and per-token log-probs.

`--where` and `--sort` are SQL *expressions* over the cache's rows, nothing more. Each is first
checked against a whitelist (`check_expression`): column names (the shard columns of
formats/schema.py and DERIVED), literals, operators, a few keywords and the scalar functions in
FUNCTIONS. Anything else is refused before polars sees it: `SELECT`, `FROM`, subqueries and
table functions such as `read_csv(...)`, which would read files outside the cache and could
echo their contents in an error. Only then does `polars.sql_expr` turn the text into an
expression; user text is never evaluated as Python. Text is decoded with the tokenizer stored
in the cache (CACHE/tokenizer), so what is shown is exactly what the reference model scored.
"""

from __future__ import annotations

import re
from pathlib import Path

from kto.formats import schema as S
from kto.formats.errors import InputError
from kto.formats.scanning import scan

from .text import num, printable, shown

POLARS_MAX_ROWS = 2**32 - 1
DERIVED = {
    "prompt_len": "prompt tokens",
    "completion_len": "completion tokens",
    "kl_completion_len": "KL completion tokens",
    "ref_logp_per_token": "ref_logp / completion_len",
}
# Scalar functions of polars SQL that touch nothing but their arguments.
FUNCTIONS = frozenset(
    """
    abs ceil floor round sqrt exp ln log10 log2 power pow mod sign greatest least coalesce nullif
    length char_length lower upper starts_with ends_with strpos substr left right concat regexp_like
    ltrim rtrim reverse replace array_length array_sum array_mean array_contains array_get
""".split()
)
KEYWORDS = frozenset(
    """
    and or not is null true false like ilike in between case when then else end cast as asc desc
    int integer bigint smallint tinyint float double real decimal numeric varchar text string boolean bool
""".split()
)
_STATEMENT_WORDS = frozenset("SELECT FROM WITH JOIN UNION VALUES TABLE LATERAL EXCEPT INTERSECT WHERE".split())
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<quoted>"[^"]*")
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|==|\|\||::|!~|[=<>+\-*/%~(),])
""",
    re.VERBOSE,
)
_ORDER = re.compile(r"^(?P<expr>.*?)(?:\s+(?P<dir>asc|desc))?$", re.IGNORECASE | re.DOTALL)


def _with_derived(lf):
    import polars as pl

    return lf.with_columns(
        pl.col(S.PROMPT_IDS).list.len().alias("prompt_len"),
        pl.col(S.COMPLETION_IDS).list.len().alias("completion_len"),
        pl.col(S.KL_COMPLETION_IDS).list.len().alias("kl_completion_len"),
        (pl.col(S.REF_LOGP) / pl.col(S.COMPLETION_IDS).list.len()).alias("ref_logp_per_token"),
    )


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and quotes: 'a desc, f(b, c)' -> ['a desc', 'f(b, c)']."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in parts + [text[start:]]]


def check_expression(text: str, flag: str) -> None:
    """Refuse `text` unless every token is on the whitelist (see the module docstring).

    The message quotes only the user's own text, never data read from anywhere.
    """
    columns = set(S.SHARD_SCHEMA.names) | set(DERIVED)
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise InputError(f"{flag} {text!r}: unexpected character {text[pos]!r} at {pos + 1}")
        if m.lastgroup != "space":
            tokens.append((m.lastgroup, m.group()))
        pos = m.end()
    for i, (kind, value) in enumerate(tokens):
        calls = i + 1 < len(tokens) and tokens[i + 1][1] == "("
        if kind == "quoted" and value[1:-1] not in columns:
            raise InputError(f"{flag} {text!r}: {value} is not a column (columns: {', '.join(sorted(columns))})")
        if kind != "word" or value.lower() in KEYWORDS:
            continue
        if calls and value.lower() not in FUNCTIONS:
            raise InputError(f"{flag} {text!r}: function {value}(...) is not allowed; no table functions (functions: {', '.join(sorted(FUNCTIONS))})")
        if not calls and value not in columns:
            if value.upper() in _STATEMENT_WORDS:
                raise InputError(
                    f"{flag} {text!r}: {value.upper()} is not allowed; {flag} is an expression over the cache's columns (no subqueries or table functions)"
                )
            raise InputError(f"{flag} {text!r}: {value!r} is not a column (columns: {', '.join(sorted(columns))})")


def _sql(text: str, flag: str):
    import polars as pl

    check_expression(text, flag)
    try:
        return pl.sql_expr(text)
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise InputError(f"{flag} {text!r}: not an SQL expression ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def select_rows(cache_dir: str | Path, *, where: str | None = None, sort: str | None = None, limit: int = 10):
    """The selected rows as a polars DataFrame (shard columns plus DERIVED), at most `limit`."""
    import polars as pl

    if limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1")
    # polars counts rows in 32 bits (`head(2**32)` is an OverflowError); a limit past that
    # already means "every row", as it does past the cache's row count.
    limit = min(limit, POLARS_MAX_ROWS)
    lf = _with_derived(scan(cache_dir))
    if where:
        lf = lf.filter(_sql(where, "--where"))
        _check(lf, "--where", where)
    if sort:
        check_expression(sort, "--sort")  # the whole text first, so a refusal quotes all of it
        keys, descending = [], []
        for item in _split_top_level(sort):
            m = _ORDER.match(item)
            if not m or not m["expr"].strip():
                raise InputError(f"--sort {sort!r}: empty sort key")
            keys.append(_sql(m["expr"], "--sort"))
            descending.append((m["dir"] or "asc").lower() == "desc")
        lf = lf.sort(keys, descending=descending, nulls_last=True, maintain_order=True)
        _check(lf, "--sort", sort)
    try:
        return lf.head(limit).collect()
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"--where/--sort on {cache_dir}: {_first_line(exc)}") from None


def _check(lf, flag: str, text: str) -> None:
    """Resolve the plan's schema now, so an unknown column is blamed on the right flag."""
    import polars as pl

    try:
        lf.collect_schema()
    except pl.exceptions.PolarsError as exc:
        message = _first_line(exc)
        if "valid columns" not in message:
            message += f" (columns: {', '.join(list(S.SHARD_SCHEMA.names) + list(DERIVED))})"
        raise InputError(f"{flag} {text!r}: {message}") from None


def load_cache_tokenizer(cache_dir: str | Path):
    """CACHE/tokenizer, refused unless it is the one the manifest records: another vocabulary
    would show other text than the reference scored, without a word."""
    from kto.formats.cache import open_cache
    from kto.formats.compute.identity import diff_identity, tokenizer_identity
    from kto.formats.compute.loading import load_tokenizer
    from kto.formats.compute.sources import ModelSource

    tok_dir = Path(cache_dir) / S.TOKENIZER_DIR
    if not tok_dir.is_dir():
        raise InputError(f"{tok_dir}: missing; the cache has no tokenizer to decode with")
    tokenizer = load_tokenizer(ModelSource(tok_dir), flag="tokenizer")
    content = open_cache(cache_dir, hold=False).manifest.content  # the manifest only: no shard held
    differs = diff_identity(content.saved_tokenizer, tokenizer_identity(tokenizer))
    if differs:
        raise InputError(f"{tok_dir}: differs from the tokenizer the manifest records ({', '.join(differs)}); its text would not be what was scored")
    return tokenizer


def describe_rows(df, tokenizer, *, flag: int = 3) -> list[dict]:
    """Per row: metadata, decoded texts, and per-token reference log-probs (the `flag` least
    likely tokens marked). Special tokens are kept, so the text is what was scored."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
    out = []
    for row in df.iter_rows(named=True):
        ids, logps = row[S.COMPLETION_IDS], row[S.REF_TOKEN_LOGPS]
        lowest = set()
        if logps is not None and flag > 0:
            lowest = set(sorted(range(len(logps)), key=lambda k: logps[k])[:flag])
        out.append(
            {
                "id": row[S.ID],
                "label": "desirable" if row[S.LABEL] else "undesirable",
                "truncated": row[S.TRUNCATED],
                "ref_logp": row[S.REF_LOGP],
                "ref_logp_per_token": row["ref_logp_per_token"],
                "kl_source_id": row[S.KL_SOURCE_ID],
                "ref_kl_logp": row[S.REF_KL_LOGP],
                "prompt_len": row["prompt_len"],
                "completion_len": row["completion_len"],
                "kl_completion_len": row["kl_completion_len"],
                "prompt": decode(row[S.PROMPT_IDS]),
                "completion": decode(ids),
                "kl_completion": decode(row[S.KL_COMPLETION_IDS]),
                "tokens": [
                    {"id": t, "text": decode([t]), "ref_logp": None if logps is None else logps[k], "least_likely": k in lowest} for k, t in enumerate(ids)
                ],
            }
        )
    return out


def render(rows: list[dict], *, width: int = 100) -> str:
    if not rows:
        return "no rows match"
    blocks = []
    for r in rows:
        # Ids come from the user's data: printed raw, one could retitle the terminal or forge a line.
        row_id, source = printable(r["id"]), printable(r["kl_source_id"])
        head = (
            f"── {row_id}  {r['label']}  ref_logp {num(r['ref_logp'])} "
            f"({num(r['ref_logp_per_token'])}/token over {r['completion_len']})"
            f"{'  TRUNCATED' if r['truncated'] else ''}  KL from {source} (ref_kl_logp {num(r['ref_kl_logp'])})"
        )
        lines = [
            head,
            f"prompt ({r['prompt_len']} tokens):",
            f"  {shown(r['prompt'])}",
            f"completion ({r['completion_len']} tokens):",
            f"  {shown(r['completion'])}",
            f"KL completion ({r['kl_completion_len']} tokens, from {source}):",
            f"  {shown(r['kl_completion'])}",
        ]
        if r["tokens"] and r["tokens"][0]["ref_logp"] is not None:
            lines.append("completion tokens with reference log-probs (* = least likely):")
            lines += _wrap([f"{'*' if t['least_likely'] else ''}{shown(t['text'])} {t['ref_logp']:.2f}" for t in r["tokens"]], width)
            worst = sorted(((k, t) for k, t in enumerate(r["tokens"], 1) if t["least_likely"]), key=lambda kt: kt[1]["ref_logp"])
            if worst:  # --flag 0 marks none
                lines.append("least likely: " + ", ".join(f"{shown(t['text'])} {t['ref_logp']:.2f} (token {k})" for k, t in worst))
        else:
            lines.append("(no per-token log-probs: the cache was made with --no-token-logps)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _wrap(items: list[str], width: int) -> list[str]:
    lines, current = [], "  "
    for item in items:
        if len(current) + len(item) + 2 > width and current.strip():
            lines.append(current.rstrip())
            current = "  "
        current += item + "  "
    if current.strip():
        lines.append(current.rstrip())
    return lines
