"""What a long step is doing, on stderr: a stage line when it starts and ends, a ticking clock or a bar while it runs.

Every step that can take more than a few seconds goes through `stage` (a block with no count to show) or `bar` (a loop
with a known length), so no command sits silent. Bars and tickers update a terminal line in place and stay off when
stderr is not a terminal (logs, CI, pipes); stage lines are printed there too, so a log still says what ran and for
how long. Only the standard library and tqdm are imported: the CLI can use it before torch is loaded.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
TICK_SECONDS = 1.0  # how often a ticker redraws its elapsed time


def say(message: str, enabled: bool = True) -> None:
    """One line on stderr ("genkit: ..."), printed above any progress bar on screen."""
    if enabled:
        tqdm.write(f"genkit: {message}", file=sys.stderr)


def interactive() -> bool:
    """Whether stderr is a terminal (bars and tickers are drawn only there)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


@contextlib.contextmanager
def stage(message: str, enabled: bool = True, done: str = "done") -> Iterator[None]:
    """Announce the block, tick its elapsed seconds on a terminal while it runs, and say how long it took."""
    if not enabled:
        yield
        return
    say(f"{message} ...")
    started = time.perf_counter()
    try:
        with ticking(message):
            yield
    finally:
        failed = sys.exc_info()[0] is not None
        say(f"{message}: {'stopped' if failed else done} after {time.perf_counter() - started:.1f} s")


_details: list[str] = []  # what `note` last said about the innermost ticking block


@contextlib.contextmanager
def ticking(message: str) -> Iterator[None]:
    """While the block runs, redraw "message: 12 s (detail)" on a terminal every second (nothing elsewhere)."""
    if not interactive():
        yield
        return
    started, stop = time.perf_counter(), threading.Event()
    _details.append("")

    def tick() -> None:
        while not stop.wait(TICK_SECONDS):
            detail = f" ({_details[-1]})" if _details and _details[-1] else ""
            sys.stderr.write(f"\r  {message}: {time.perf_counter() - started:.0f} s{detail}\x1b[K")
            sys.stderr.flush()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        _details.pop()
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def note(detail: str) -> None:
    """Show `detail` beside the elapsed time of the running `stage` or `ticking` block (e.g. "iteration 350 of 1000")."""
    if _details:
        _details[-1] = detail


def bar(iterable: Iterable[T] | None = None, total: float | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
        **options: Any) -> tqdm:
    """A tqdm bar on stderr, drawn only on a terminal (and when `enabled`); it disappears when done."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=not (enabled and interactive()), **options)
