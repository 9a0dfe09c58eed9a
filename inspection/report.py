"""kto-inspect run: PNG plots of a run's metrics and one self-contained report.html.

matplotlib is the optional `plot` extra. It is used through `matplotlib.figure.Figure` only
(no pyplot), so no global backend or figure registry is touched. Eval lines are drawn dotted
with markers next to the solid train ones; dashed is kept for the raw KL estimate.

Five choices keep the plots from misleading:
- the SFT NLL (about 1, where the KTO loss moves around 0.5) has its own plot, drawn only when
  the run's --sft-weight is above 0 (from kto_run.json; for another metrics file, such as
  metrics.jsonl.superseded, from its own lines: `loss` differs from `kto_loss`) or `--sft`
  asks: on the KTO loss's axis it flattened the loss that matters;
- raw z is drawn dashed, and only when it differs from clamped z somewhere (z < 0 clamped to
  0): drawn under an equal clamped line it was invisible. The table lists it only then too;
- the header names the run directory and its files relative to it, never an absolute path;
- a metric without a value at some logged steps (rewards/rejected on steps without undesirable
  rows) is broken there, with markers: a line joined across them showed values no step had;
- eval lines are the ones on the last eval's cache, as the checks read them, and the legend says
  how many were left out: a line joined across a changed --eval-cache drew a jump no step made.

A train line of a noisy metric (a KTO loss over 8 rows jumps by 0.1 from step to step) is drawn
smoothed (`ema`, --smooth, 0.6 by default as TensorBoard's) over its raw values, faded: the trend
is what a reader looks for, and the raw values stay in view. Eval lines, lr and a line with gaps
are drawn as they are.
"""

from __future__ import annotations

import base64
import gc
import html
import io
import math
from pathlib import Path

import numpy as np

from kto.formats.atomic import write_bytes_atomic
from kto.formats.errors import InputError
from kto.formats.metrics_line import TRAIN_ONLY_KEYS
from kto.formats.runrecord import read_run_config

from .report_folder import GENERATOR, claim, plots_meta, refuse_foreign_folder, refuse_linked_report, start_report
from .runlog import METRICS_NAME, RunLog, checks, column, evals_left_out, last_values, on_last_eval_cache, read_run
from .text import num, printable, table

INSTALL_HINT = "pip install 'kto-offline[plot]'"

# (file stem, title, y label, [(metric, legend label)]). `chosen`/`rejected` are TRL's names.
GROUPS = [
    ("loss", "loss (KTO, plus --sft-weight × SFT loss when set)", "loss", [("loss", "loss")]),
    ("sft", "SFT loss (mean NLL of desirable completion tokens)", "nats / token", [("sft_loss", "SFT loss (desirable NLL)")]),
    ("kl", "KL estimate z", "nats", [("kl", "clamped z (>= 0, used in the loss)"), ("kl_raw", "raw z (before clamping)")]),
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
DASHED = {"kl_raw"}
UNSMOOTHED = {"lr"}
"""A train line drawn as it is at any --smooth: the schedule is exact, not noisy."""
DEFAULT_SMOOTH = 0.6
MIN_SMOOTHED = 10
"""Values a train line needs before it is smoothed: over fewer, the faded raw line is all there is to see."""
SAME_AS = {"kl_raw": "kl"}
"""A metric drawn and listed only where it differs from its partner (raw z from clamped z)."""
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
    "tokens/saved",
    "epoch",
]


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError(f"kto-inspect run draws its plots with matplotlib, which is not installed: {INSTALL_HINT}") from None
    return Figure


def gapped_series(records: list[dict], name: str) -> np.ndarray:
    """`name`'s value on each of `records`, NaN where a line has none (a null, or one that means
    nothing: runlog.column's rules, RunLog.series's), read in one pass. matplotlib breaks a line
    at NaN: joined across such steps, a sparse series (rewards/rejected logged only on steps
    with undesirable rows) showed values at steps that had none. (Each line was once read as a
    RunLog of its own: 2.2 million calls and 25 s for a 200,000-line log.) An array: a drawn
    line keeps the data it was given, and a list of floats is 5 times the size."""
    return np.array([math.nan if v is None else v for v in column(records, name)], dtype=float)


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """The exponential moving average of `values`, debiased as TensorBoard's smoothing is
    (s_k = weight·s_(k-1) + (1 − weight)·x_k, shown as s_k / (1 − weight^k) over the k values so
    far, so that it starts at the first value, not at 0). A NaN (a step without that metric) is
    skipped and stays NaN: the smoothed line is broken where the raw one is."""
    out = np.full(len(values), math.nan)
    state, seen = 0.0, 0
    for k, x in enumerate(values):
        if math.isnan(x):
            continue
        state, seen = weight * state + (1 - weight) * x, seen + 1
        out[k] = state / (1 - weight**seen)
    return out


def _differs(values: np.ndarray, partner: np.ndarray) -> bool:
    """Whether a SAME_AS metric differs from its partner at some line where it has a value."""
    has = ~np.isnan(values)
    return bool(np.any(values[has] != partner[has]))  # NaN != anything: a partner without a value there differs


def _series_of(log: RunLog, metrics: list[tuple[str, str]]) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per split, the steps and each metric's gapped values (its SAME_AS partner's too). The
    eval lines are those on the last eval cache, as the checks read them: a resume may change
    --eval-cache, and a line joining evals on two caches shows a jump no step made."""
    names = {name for name, _ in metrics} | {SAME_AS[name] for name, _ in metrics if name in SAME_AS}
    names |= {n for n, partner in SAME_AS.items() if partner in names}
    out = {}
    for split, records in (("train", log.train), ("eval", on_last_eval_cache(log)[0].eval)):
        out[split] = (np.array([rec["step"] for rec in records], dtype=np.int64), {name: gapped_series(records, name) for name in names})
    return out


def _shown(name: str, values: dict[str, np.ndarray]) -> bool:
    """Drawn: it has a value somewhere and, for a SAME_AS metric, differs from its partner."""
    if np.isnan(values[name]).all():
        return False
    return name not in SAME_AS or _differs(values[name], values[SAME_AS[name]])


def _smoothed(name: str, split: str, values: np.ndarray, count: int, smooth: float) -> bool:
    """Drawn smoothed: a train line of a noisy metric, long enough, with a value at every logged
    step. A line with gaps (rewards/rejected on steps without undesirable rows) is drawn as
    logged, broken there with markers: its smoothed line, broken at the same steps, could be
    no line at all (a value every other step draws no segment). `count`: its values (not NaN)."""
    return smooth > 0 and split == "train" and name not in UNSMOOTHED and count >= MIN_SMOOTHED and count == len(values)


def draw_group(log: RunLog, group, Figure, smooth: float = DEFAULT_SMOOTH):
    """One figure for one group of metrics, or None when none of them was logged."""
    from matplotlib.ticker import MaxNLocator

    stem, title, ylabel, metrics = group
    series = _series_of(log, metrics)
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    drawn, evals_drawn, smoothed = 0, False, False
    for k, (name, label) in enumerate(metrics):
        for split in ("train", "eval"):
            steps, values = series[split]
            if not _shown(name, values):
                continue
            line = "--" if name in DASHED else ("-" if split == "train" else ":")
            count = int(np.count_nonzero(~np.isnan(values[name])))
            # Markers wherever the line is broken too: a value between two gaps is a point only.
            marker = "o" if split == "eval" or count == 1 or count < len(steps) else None
            hidden = [n for n in SAME_AS if SAME_AS[n] == name and not np.isnan(values[n]).all() and not _shown(n, values)]
            shown = label + "".join(f"; {n} equal at every step" for n in hidden)
            legend = shown if split == "train" else f"{shown}, eval"
            if _smoothed(name, split, values[name], count, smooth):
                ax.plot(steps, values[name], color=f"C{k}", linestyle=line, linewidth=0.8, alpha=0.3)
                ax.plot(steps, ema(values[name], smooth), color=f"C{k}", linestyle=line, label=legend)
                smoothed = True
            else:
                ax.plot(steps, values[name], color=f"C{k}", linestyle=line, marker=marker, markersize=4, label=legend)
            drawn, evals_drawn = drawn + 1, evals_drawn or split == "eval"
    if not drawn:
        return None
    if stem == "kl":
        ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    notes = [f"train lines smoothed (EMA {num(smooth)}, --smooth), raw values faded"] if smoothed else []
    notes += [_eval_note(log)] if evals_drawn else []
    _legend(ax, "; ".join(n for n in notes if n))
    return fig


def _eval_note(log: RunLog) -> str:
    """The legend's title where evals on another eval cache were left out, as the checks say it."""
    other = on_last_eval_cache(log)[1]
    return f"evals on the last eval cache only ({evals_left_out(other)})" if other else ""


def _legend(ax, title: str) -> None:
    """The legend below the plot, at a fixed place: loc="best" searched every point for a free
    corner (matplotlib warned on stderr that it "can be slow" on a long log), and a legend
    inside the axes can hide points."""
    labels = ax.get_legend_handles_labels()[1]
    columns = 1 if max(len(label) for label in labels) > 45 else 2
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=columns, title=title or None, title_fontsize=8, frameon=False)


# Lines past which a report collects each drawn figure's memory before the next (plot_group).
LONG_LOG_LINES = 20_000


def plot_group(log: RunLog, group, Figure, smooth: float = DEFAULT_SMOOTH) -> bytes | None:
    """One PNG for one group of metrics, or None when none of them was logged."""
    fig = draw_group(log, group, Figure, smooth)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    # A figure is a web of reference cycles, freed by the cyclic collector only, whose full
    # passes grow rare while a long log's records are alive: on a 200,000-line log each drawn
    # figure stayed (60-180 MB each, its paths and caches) and the report's peak memory grew
    # by 300 MB over the plots. Collected here on a long log, it goes before the next one is
    # drawn; not on a short one, where a full collection costs more than the figure holds (a
    # collection per figure doubled the report tests' time).
    del fig
    if len(log.train) + len(log.eval) > LONG_LOG_LINES:
        gc.collect()
    return buf.getvalue()


def sft_weight(run_dir: Path) -> float | None:
    """The run's --sft-weight from its kto_run.json, or None without a readable record."""
    try:
        record = read_run_config(run_dir)
    except InputError:
        return None
    value = record["config"].get("sft_weight") if record else None
    return float(value) if isinstance(value, (int, float)) else None


def sft_in_loss(log: RunLog) -> bool | None:
    """Whether the SFT loss was part of `loss`, read from the train lines themselves: kto-train
    logs `loss` = `kto_loss` + --sft-weight × `sft_loss`, so they differ exactly when the weight
    is above 0. None when no line logs both (runs made before `kto_loss` was logged)."""
    pairs = [(rec.get("loss"), rec.get("kto_loss")) for rec in log.train]
    pairs = [(a, b) for a, b in pairs if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (a, b))]
    return any(a != b for a, b in pairs) if pairs else None


def _sft_plot(log: RunLog, sft: bool) -> tuple[bool, str | None]:
    """Whether to draw the SFT loss, and when not, the note saying why. RUN/metrics.jsonl is
    the run that kto_run.json records; another metrics file (metrics.jsonl.superseded, set
    aside when a run started over, or metrics.after-step-K.superseded.jsonl, the lines a resume
    from step K dropped) is decided by its own lines."""
    if sft:
        return True, None
    if log.path.name == METRICS_NAME:
        weight = sft_weight(log.path.parent)
        if (weight or 0) > 0:
            return True, None
        why = "--sft-weight 0" if weight == 0 else "no run record names --sft-weight"
    else:
        in_loss, name = sft_in_loss(log), printable(log.path.name)
        if in_loss:
            return True, None
        why = (
            f"loss equals kto_loss at every line of {name} (--sft-weight 0)"
            if in_loss is False
            else f"{name} logs no kto_loss, so whether --sft-weight was set is unknown"
        )
    return False, f"SFT loss not plotted: {why} (kto-inspect run --sft draws it)"


def last_table(train: dict, evals: dict) -> tuple[list[str], list[list]]:
    """Headers and rows: metric | last train value | last eval value (from `last_values`); a
    SAME_AS metric only where it differs from its partner."""
    headers = ["metric", f"train (step {train['step']})" if train else "train", f"eval (step {evals['step']})" if evals else "eval"]
    rows = []
    for m in TABLE_METRICS:
        cells = [v.get(m) if m not in SAME_AS or v.get(m) != v.get(SAME_AS[m]) else None for v in (train, evals)]
        # An eval line's train-only keys are null by design (formats/metrics_line.py): no row of them for evals alone.
        if any(c is not None for c in cells) or (m not in SAME_AS and (m in train or (m in evals and m not in TRAIN_ONLY_KEYS))):
            rows.append([m, *cells])
    return headers, rows


PLOT_NAMES = tuple(f"{group[0]}.png" for group in GROUPS)


def _draws(log: RunLog, group: tuple) -> bool:
    """Whether draw_group draws a line of `group`, so the report writes its PNG."""
    series = _series_of(log, group[3])
    return any(_shown(name, series[split][1]) for name, _ in group[3] for split in series)


def _report_folder(log: RunLog, out_dir: str | Path | None, draw_sft: bool) -> tuple[Path, str | None, frozenset[str]]:
    """Where the report goes, a note for the output line when it is not RUN/report, and the
    PNGs there that an earlier report wrote (report_folder.py), which this one removes.

    Another metrics file than RUN/metrics.jsonl (metrics.jsonl.superseded, set aside when a run
    started over; metrics.after-step-K.superseded.jsonl, the lines a resume dropped) is another
    run's or another branch's: its report gets a folder of its own, RUN/report/NAME with
    the dots as dashes, inside report/ because kto-train refuses any other new entry in a run."""
    groups = {f"{group[0]}.png": group for group in GROUPS}

    def writes(name: str) -> bool:  # asked only of a PNG there that no report of ours wrote
        return (name != "sft.png" or draw_sft) and _draws(log, groups[name])

    if out_dir is not None:
        return Path(out_dir), None, refuse_foreign_folder(Path(out_dir), f"--to {out_dir}", PLOT_NAMES, writes)
    own = log.path.parent / "report"
    refuse_linked_report(own)  # replaced whole below: never through a link, to another's folder
    if log.path.name == METRICS_NAME:  # the run's own report folder: replaced whole, whoever wrote it
        return own, None, frozenset(PLOT_NAMES)
    folder = own / log.path.name.replace(".", "-")
    refuse_linked_report(folder)
    earlier = refuse_foreign_folder(folder, f"{folder} (the report folder of {log.path.name}; pass --to for another)", PLOT_NAMES, writes)
    return folder, f"the report of {log.path.name}; {own} is {METRICS_NAME}'s", earlier


def _write_plots(log: RunLog, out_dir: Path, draw_sft: bool, Figure: type, smooth: float) -> dict[str, bytes]:
    """Draw and write each group's PNG, the claim's record naming it before it is written."""
    images: dict[str, bytes] = {}
    for group in GROUPS:
        if group[0] == "sft" and not draw_sft:
            continue
        png = plot_group(log, group, Figure, smooth)
        if png is not None:
            claim(out_dir, [*(f"{stem}.png" for stem in images), f"{group[0]}.png"])
            write_bytes_atomic(out_dir / f"{group[0]}.png", png)
            images[group[0]] = png
    return images


def build_report(run: str | Path, out_dir: str | Path | None = None, sft: bool = False, smooth: float = DEFAULT_SMOOTH) -> dict:
    """Read the metrics, write one PNG per group and report.html into `out_dir` (default:
    RUN/report, or RUN/report/NAME for a metrics file other than RUN/metrics.jsonl). The SFT
    plot is drawn when `sft` or the run's --sft-weight > 0; train lines are smoothed by `smooth`
    (0: drawn as they are; `ema`). Returns what was written and found."""
    if not 0 <= smooth < 1:
        raise InputError(f"--smooth {smooth}: the EMA's weight is in [0, 1) (0: no smoothing)")
    log = read_run(run)
    draw_sft, sft_note = _sft_plot(log, sft)
    Figure = _figure_class()
    given = out_dir is not None
    out_dir, out_note, earlier = _report_folder(log, out_dir, draw_sft)
    try:
        start_report(out_dir, earlier)
    except InputError as exc:
        if given:
            raise
        # A run read where it cannot be written (a read-only mount, another user's run): the
        # default folder is the only thing in the way.
        raise InputError(f"{exc} ({out_dir} is --to's default, in the run directory: give --to DIR elsewhere)") from None
    images = _write_plots(log, out_dir, draw_sft, Figure, smooth)
    found = checks(log)
    last = {"train": last_values(log.train), "eval": last_values(log.eval)}
    headers, rows = last_table(last["train"], last["eval"])
    report_path = out_dir / "report.html"
    write_bytes_atomic(report_path, _html(log, found, headers, rows, images, sft_note).encode())
    return {
        "metrics": str(log.path),
        "out": str(out_dir),
        "out_note": out_note,
        "report": str(report_path),
        "plots": [str(out_dir / f"{stem}.png") for stem in images],
        "smooth": smooth,
        "train_lines": len(log.train),
        "eval_lines": len(log.eval),
        "warnings": log.warnings,
        "checks": found,
        "last": last,
    }


def render(result: dict) -> str:
    headers, rows = last_table(result["last"]["train"], result["last"]["eval"])
    # Warnings name the metrics file and checks name metrics: user text, made printable.
    lines = [f"metrics   {printable(result['metrics'])} ({result['train_lines']} train lines, {result['eval_lines']} eval lines)"]
    lines += [f"warning   {printable(w)}" for w in result["warnings"]]
    lines += ["", "checks"] + [f"  {printable(c)}" for c in result["checks"]]
    lines += ["", "last values", table(headers, rows)]
    note = f" ({printable(result['out_note'])})" if result.get("out_note") else ""
    lines += ["", f"wrote {printable(result['report'])} and {len(result['plots'])} plots to {printable(result['out'])}{note}"]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse}td,th{padding:.2rem .8rem;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.warn{color:#a40}figure{margin:1rem 0}img{max-width:100%}
code{background:#f4f4f4;padding:0 .2rem}"""


def _html(log: RunLog, found: list[str], headers: list[str], rows: list[list], images: dict[str, bytes], sft_note: str | None = None) -> str:
    e = lambda text: html.escape(printable(text))  # user text: no terminal or bidi controls, no markup
    run = log.path.resolve().parent.name  # the run's own name: the header carries no absolute path
    parts = [
        "<!doctype html>",
        f'<html lang="en"><head><meta charset="utf-8">{GENERATOR}{plots_meta(f"{stem}.png" for stem in images)}',
        f"<title>kto run report: {e(run)}</title><style>{_CSS}</style></head><body>",
        f"<h1>kto run report: {e(run)}</h1>",
        f"<p>From <code>{e(log.path.name)}</code> of run <code>{e(run)}</code>: {len(log.train)} train lines, {len(log.eval)} eval lines.</p>",
    ]
    if sft_note:
        parts.append(f"<p>{e(sft_note)}.</p>")
    # A warning names the metrics file by its path: the report names it as RUN/NAME, never the
    # absolute path of the machine it was made on (a report is shared).
    parts += [f'<p class="warn">warning: {e(w.replace(str(log.path), f"{run}/{log.path.name}"))}</p>' for w in log.warnings]
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
