"""kto-inspect run: PNG plots of a run's metrics and one self-contained report.html.

matplotlib is the optional `plot` extra. It is used through `matplotlib.figure.Figure` only
(no pyplot), so no global backend or figure registry is touched. Eval lines are drawn as
separate dashed series next to the train ones.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from kto.formats.atomic import write_bytes_atomic
from kto.formats.errors import InputError

from .runlog import RunLog, checks, last_values, read_run
from .text import num, table

INSTALL_HINT = "pip install 'kto-offline[plot]'"

# (file stem, title, y label, [(metric, legend label)]). `chosen`/`rejected` are TRL's names.
GROUPS = [
    ("loss", "loss", "loss", [("loss", "KTO loss"), ("sft_loss", "SFT loss (desirable NLL)")]),
    ("kl", "KL estimate z", "nats", [("kl_raw", "raw"), ("kl", "clamped (>= 0, used in the loss)")]),
    (
        "rewards",
        "implicit rewards β·(log πθ − log πref)",
        "reward",
        [
            ("rewards/chosen", "desirable (rewards/chosen)"),
            ("rewards/rejected", "undesirable (rewards/rejected)"),
            ("rewards/margins", "margin (rewards/margins)"),
        ],
    ),
    ("logps", "policy log-probs", "nats", [("logps/chosen", "desirable (logps/chosen)"), ("logps/rejected", "undesirable (logps/rejected)")]),
    ("lr", "learning rate", "lr", [("lr", "lr")]),
    ("grad_norm", "gradient norm (before clipping)", "norm", [("grad_norm", "grad norm")]),
    ("tokens_per_s", "throughput", "tokens / s", [("tokens_per_s", "tokens/s")]),
]
TABLE_METRICS = [
    "loss",
    "kl",
    "kl_raw",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "sft_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "epoch",
]


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError(f"kto-inspect run draws its plots with matplotlib, which is not installed: {INSTALL_HINT}") from None
    return Figure


def plot_group(log: RunLog, group, Figure) -> bytes | None:
    """One PNG for one group of metrics, or None when none of them was logged."""
    from matplotlib.ticker import MaxNLocator

    stem, title, ylabel, metrics = group
    fig = Figure(figsize=(7, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for k, (name, label) in enumerate(metrics):
        color = f"C{k}"
        for split, style in (("train", dict(linestyle="-")), ("eval", dict(linestyle="--", marker="o", markersize=4))):
            steps, values = log.series(name, split)
            if values:
                marker = {} if split == "eval" or len(values) > 1 else dict(marker="o")
                ax.plot(steps, values, color=color, label=label if split == "train" else f"{label}, eval", **style, **marker)
                drawn += 1
    if not drawn:
        return None
    if stem == "kl":
        ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def last_table(train: dict, evals: dict) -> tuple[list[str], list[list]]:
    """Headers and rows: metric | last train value | last eval value (from `last_values`)."""
    headers = ["metric", f"train (step {train['step']})" if train else "train", f"eval (step {evals['step']})" if evals else "eval"]
    rows = [[m, train.get(m), evals.get(m)] for m in TABLE_METRICS if m in train or m in evals]
    return headers, rows


def build_report(run: str | Path, out_dir: str | Path | None = None) -> dict:
    """Read the metrics, write one PNG per group and report.html into `out_dir`
    (default: RUN/report). Returns what was written and what was found."""
    log = read_run(run)
    Figure = _figure_class()
    out_dir = Path(out_dir) if out_dir is not None else log.path.parent / "report"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--to {out_dir}: cannot create ({exc.strerror})") from None
    images: dict[str, bytes] = {}
    for group in GROUPS:
        png = plot_group(log, group, Figure)
        if png is not None:
            write_bytes_atomic(out_dir / f"{group[0]}.png", png)
            images[group[0]] = png
    found = checks(log)
    last = {"train": last_values(log.train), "eval": last_values(log.eval)}
    headers, rows = last_table(last["train"], last["eval"])
    report_path = out_dir / "report.html"
    write_bytes_atomic(report_path, _html(log, found, headers, rows, images).encode())
    return {
        "metrics": str(log.path),
        "out": str(out_dir),
        "report": str(report_path),
        "plots": [str(out_dir / f"{stem}.png") for stem in images],
        "train_lines": len(log.train),
        "eval_lines": len(log.eval),
        "warnings": log.warnings,
        "checks": found,
        "last": last,
    }


def render(result: dict) -> str:
    headers, rows = last_table(result["last"]["train"], result["last"]["eval"])
    lines = [f"metrics   {result['metrics']} ({result['train_lines']} train lines, {result['eval_lines']} eval lines)"]
    lines += [f"warning   {w}" for w in result["warnings"]]
    lines += ["", "checks"] + [f"  {c}" for c in result["checks"]]
    lines += ["", "last values", table(headers, rows)]
    lines += ["", f"wrote {result['report']} and {len(result['plots'])} plots to {result['out']}"]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse}td,th{padding:.2rem .8rem;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.warn{color:#a40}figure{margin:1rem 0}img{max-width:100%}
code{background:#f4f4f4;padding:0 .2rem}"""


def _html(log: RunLog, found: list[str], headers: list[str], rows: list[list], images: dict[str, bytes]) -> str:
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kto run report: {e(str(log.path.parent))}</title><style>{_CSS}</style></head><body>",
        "<h1>kto run report</h1>",
        f"<p>From <code>{e(str(log.path))}</code>: {len(log.train)} train lines, {len(log.eval)} eval lines.</p>",
    ]
    parts += [f'<p class="warn">warning: {e(w)}</p>' for w in log.warnings]
    parts += ["<h2>Checks</h2><ul>"] + [f"<li>{e(c)}</li>" for c in found] + ["</ul>"]
    parts += ["<h2>Last values</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{e(c if isinstance(c, str) else num(c))}</td>" for c in row) + "</tr>" for row in rows]
    parts += ["</table>", "<h2>Plots</h2>"]
    titles = {g[0]: g[1] for g in GROUPS}
    for stem, png in images.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img alt="{e(titles[stem])}" src="data:image/png;base64,{data}"><figcaption>{e(titles[stem])} ({stem}.png)</figcaption></figure>'
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
