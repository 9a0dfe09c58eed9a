"""The folder kto-inspect run writes its report into: whose it is, and which files in it an
earlier report wrote.

A report's report.html records the PNGs it wrote (PLOTS_META in its head); the claim written
before the first PNG records them too, one more before each is written, so a report stopped
while drawing leaves a record of exactly what it left. Only those PNGs are ever removed or
replaced by a later report: another file of a plot's name (a user's sft.png beside a report
that drew none) stays, and a report that would write that name refuses.

An earlier version's report.html has no record. Its plots are the ones it shows: every version
captioned each figure with its file, `(loss.png)</figcaption>`, and escapes all other text, so
no run name or warning can forge one. Its claim (a stopped report, `being written`) names no
plot: what such a report left is taken for the user's, refused when drawn again, never deleted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from kto.formats import schema as S
from kto.formats.atomic import write_bytes_atomic
from kto.formats.cache import cache_holding
from kto.formats.errors import InputError
from kto.formats.files import output_dir
from kto.formats.runrecord import RUN_RECORD_NAME
from kto.formats.shards import JOURNAL_DIR

# Files that mark a folder kto's own: a cache (its manifest or journal), a run (its record), a
# checkpoint (its state) or a saved model. The commands that own them refuse foreign files there.
KTO_MARKERS = (S.MANIFEST_NAME, JOURNAL_DIR, RUN_RECORD_NAME, "trainer_state.json", "config.json", "adapter_config.json")

# In report.html's head: a folder whose report.html carries it is a report of ours. Which of
# the PNGs there it wrote is PLOTS_META's list (names from the report's plots only: no quoting).
GENERATOR = '<meta name="generator" content="kto-inspect run">'
_PLOTS = re.compile(rb'<meta name="kto-report-plots" content="([^"<>]*)">')
_CAPTION = re.compile(rb"\(([a-z_]+\.png)\)</figcaption>")
_HEAD = 4096


def plots_meta(names: Iterable[str]) -> str:
    """The head's record of the PNGs a report wrote (or, in its claim, has written so far)."""
    return f'<meta name="kto-report-plots" content="{" ".join(names)}">'


def earlier_plots(folder: Path, plot_names: Sequence[str]) -> frozenset[str] | None:
    """The PNGs (of `plot_names`) that folder's report.html says its report wrote; None when
    there is no report.html of ours: none, unreadable, or one without the generator tag or the
    title every earlier version wrote."""
    try:
        with (folder / "report.html").open("rb") as f:
            head = f.read(_HEAD)
            if GENERATOR.encode() not in head and b"<title>kto run report: " not in head:
                return None
            record = _PLOTS.search(head)
            found = record.group(1).split() if record else _CAPTION.findall(head + f.read())
    except OSError:
        return None
    return frozenset(name.decode() for name in found) & frozenset(plot_names)


def refuse_foreign_folder(out_dir: Path, label: str, plot_names: Sequence[str], writes: Callable[[str], bool]) -> frozenset[str]:
    """--to: not a kto cache, run, checkpoint or model folder, nor inside a cache; a report.html
    there is ours, and no PNG this report writes (`writes(name)`, asked only of a PNG there that
    no report wrote) is there unless an earlier report of ours wrote it. Returns the PNGs the
    earlier report wrote, which the new one removes (start_report). First, a --to that cannot
    become a folder (a file, a link to nothing, a name over the filesystem's limit): one line,
    not the traceback of the checks below."""
    output_dir(out_dir, label)
    held = next((name for name in KTO_MARKERS if (out_dir / name).exists()), None)
    cache = cache_holding(out_dir / "report.html")
    if held is not None or cache is not None:
        what = f"holds {held}" if held is not None else f"is inside the cache {cache}"
        raise InputError(
            f"{label}: {what}, a kto cache, run, checkpoint or model folder (which would then refuse the report's files); write the report elsewhere"
        )
    earlier = earlier_plots(out_dir, plot_names)
    ours = earlier or frozenset()
    clash = next((name for name in plot_names if name not in ours and os.path.lexists(out_dir / name) and writes(name)), None)
    if clash is None and earlier is None and os.path.lexists(out_dir / "report.html"):
        clash = "report.html"
    if clash is not None and earlier == frozenset():  # a report of ours that lists nothing: likely one an earlier version stopped
        raise InputError(
            f"{label}: holds {clash}, which the kto-inspect run report there does not list (a report an earlier version stopped "
            "lists nothing: remove its PNGs if they are its); write the report into a new or empty folder"
        )
    if clash is not None:
        raise InputError(f"{label}: holds {clash}, which no kto-inspect run report wrote; write the report into a new or empty folder")
    return ours


def refuse_linked_report(folder: Path) -> None:
    """RUN/report (or a folder in it) that is a symbolic link: refused, not written through. The
    run's report folder is replaced whole, whoever wrote it, so a link there (to another run's
    report, or to any folder) would have that folder's files replaced; kto-train too treats a
    link in a run directory as not its own. A --to the user gives may be a link: it is their own
    name for their folder, and gets refuse_foreign_folder's checks."""
    if os.path.islink(folder):
        raise InputError(
            f"{folder}: a symbolic link (to {os.readlink(folder)}), not the run's own report folder; kto-inspect run writes "
            "only a real RUN/report: remove the link, or give the folder as --to"
        )


def claim(out_dir: Path, plots: Iterable[str]) -> None:
    """report.html saying "being written", with the record of the PNGs this report has written
    (or is about to write), so that a stopped report leaves a folder the next one replaces."""
    page = f"<!doctype html><html><head>{GENERATOR}{plots_meta(plots)}</head><body>being written</body></html>"
    write_bytes_atomic(out_dir / "report.html", page.encode())


def start_report(out_dir: Path, earlier: Iterable[str]) -> None:
    """Create the folder, claim it, and remove the earlier report's PNGs (`earlier`).

    The claim comes before anything else, and records the earlier PNGs until they are gone, so a
    report stopped at any point (Ctrl-C, a full disk) leaves a folder the next report may
    replace. Every plot of the earlier report goes before the first new one is written: a plot
    this report does not draw (sft.png without --sft) would otherwise stay beside it, and a
    stopped report leaves new plots only."""
    output_dir(out_dir, f"--to {out_dir}")  # a link to nothing: mkdir says only "File exists"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--to {out_dir}: cannot create ({exc.strerror})") from None
    present = sorted(name for name in earlier if os.path.lexists(out_dir / name))
    claim(out_dir, present)
    for name in present:
        try:
            (out_dir / name).unlink(missing_ok=True)
        except OSError as exc:
            raise InputError(f"{out_dir / name}: cannot remove the earlier report's plot ({exc.strerror})") from None
