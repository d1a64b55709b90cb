"""Progress of long work (score, train, report, import) on stderr.

Work is a sequence of phases, each with a count of what it went through and its
elapsed time. When stderr is a terminal the phases show as a live display (rich);
otherwise (cron, CI, a pipe) as plain timestamped lines, one when a phase starts and
one when it ends; ``quiet`` shows nothing. Warnings and notices (such as the fallback
notice) are not progress and do not come through here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TextIO


def _count(n: int | float) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:,.0f}"


class Phase:
    """One running phase: ``advance`` its count, ``total`` once known."""

    def __init__(self, progress: Progress, name: str, total: int | None, unit: str):
        self.progress, self.name, self.total, self.unit = progress, name, total, unit
        self.done = 0
        self.began = time.perf_counter()
        self.result: str | None = None

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        self.progress._advanced(self, note)

    def finish(self, result: str) -> None:
        """What the phase produced, shown on its last line (e.g. '20,669 records')."""
        self.result = result

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.began


class Progress:
    """Where progress goes. ``live``: None decides by whether ``stream`` is a terminal."""

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None,
                 live: bool | None = None, command: str = ""):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.command = command
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.live = (not quiet) and (isatty() if live is None else live)
        self._rich = None
        self._began = time.perf_counter()

    @classmethod
    def silent(cls) -> Progress:
        return cls(quiet=True)

    # ------------------------------------------------------------------ plain lines
    def _line(self, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        prefix = f"{self.command}: " if self.command else ""
        print(f"[{stamp}] {prefix}{text}", file=self.stream, flush=True)

    # ------------------------------------------------------------------ rich display
    def _display(self):
        if self._rich is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Live

            console = Console(file=self.stream, force_terminal=True)
            self._rich = Live(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                              MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                              transient=False)
            self._rich.start()
        return self._rich

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the API
    @contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "") -> Iterator[Phase]:
        """A phase of the work: shown when it starts, advanced by the caller, closed with
        its count and elapsed time when it ends."""
        phase = Phase(self, name, total, unit)
        task = None
        if self.live:
            task = self._display().add_task(name, total=total)
            phase._task = task
        elif not self.quiet:
            of = f" ({_count(total)} {unit})".rstrip() if total is not None else ""
            self._line(f"{name}{of} ...")
        try:
            yield phase
        finally:
            if task is not None:
                self._rich.update(task, completed=total if total is not None else phase.done,
                                  total=total if total is not None else max(phase.done, 1),
                                  description=f"{name}: {self._summary(phase)}")
            elif not self.quiet:
                self._line(f"{name}: {self._summary(phase)}")

    def _summary(self, phase: Phase) -> str:
        what = phase.result
        if what is None and phase.done:
            what = f"{_count(phase.done)} {phase.unit}".rstrip()
        return f"{what + ' ' if what else ''}in {phase.elapsed:.1f} s"

    def _advanced(self, phase: Phase, note: str | None) -> None:
        if self.live:
            self._rich.update(phase._task, completed=phase.done)
        elif not self.quiet and phase.total:
            of = f"{_count(phase.done)} of {_count(phase.total)} {phase.unit}".rstrip()
            self._line(f"{phase.name}: {of}{' (' + note + ')' if note else ''}, "
                       f"{phase.elapsed:.1f} s")

    def done(self, text: str) -> None:
        """The last line: what the whole command did, and its total time."""
        if self.quiet:
            return
        self.close()
        self._line(f"{text} in {time.perf_counter() - self._began:.1f} s")
