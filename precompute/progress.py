"""Progress bar (rows, tokens/s, ETA), for the main process only."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, unit: str, enabled: bool = True):
        self.enabled = enabled
        self.tokens = 0
        self.started = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            # sys.stderr as the command set it: it drops writes that fail after a hangup
            # (formats/signals.py), and tqdm keeps the object it is given.
            self.bar = tqdm(total=total, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, rows: float, tokens: int) -> None:
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(rows)
            rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        # Closed now, also when the block raises: a bar left to the interpreter's exit drew itself
        # again below the error line (or the line a stop signal prints), which then was not the last.
        self.close()
