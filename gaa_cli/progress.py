"""Training progress on stderr: a live Rich bar on a terminal; plain lines elsewhere (nohup, CI, job schedulers),
where a bar would print nothing until the end."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["TrainProgress", "LINE_EVERY_S"]

LINE_EVERY_S = 10.0  # off a terminal: a line at the end of an epoch at most this often, and mid-epoch if one runs long


class TrainProgress:
    """Progress over the optimiser steps of a run; `disable` shows nothing."""

    def __init__(self, console: Console, total_steps: int, done_steps: int, disable: bool = False) -> None:
        self._console, self._disable = console, disable
        self._live = console.is_terminal and not disable
        self._total, self._done = total_steps, done_steps
        self._epoch, self._epochs, self._loss, self._val = 0, 0, float("nan"), None
        self._started = self._said = time.monotonic()
        self._bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val acc {task.fields[val]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not self._live,
            transient=False,
        )
        self._task = self._bar.add_task("train", total=total_steps, completed=done_steps, epoch="-", loss="-", val="-")

    def __enter__(self) -> TrainProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def step(self, epoch: int, epochs: int, mean_loss: float) -> None:
        self._done += 1
        self._epoch, self._epochs, self._loss = epoch, epochs, mean_loss
        self._bar.update(self._task, advance=1, epoch=f"{epoch}/{epochs}", loss=f"{mean_loss:.3f}")
        if not self._live and time.monotonic() - self._said >= 3 * LINE_EVERY_S:
            self._line()

    def epoch_done(self, val_acc: float | None, last: bool) -> None:
        """The end of an epoch: the validation accuracy (if any) joins the display."""
        if val_acc is not None:
            self._val = val_acc
            self._bar.update(self._task, val=f"{val_acc:.3f}")
        if not self._live and (last or time.monotonic() - self._said >= LINE_EVERY_S):
            self._line()

    def _line(self) -> None:
        if self._disable:
            return
        val = f"  val acc {self._val:.3f}" if self._val is not None else ""
        elapsed = time.monotonic() - self._started
        self._console.print(f"epoch {self._epoch}/{self._epochs}  step {self._done}/{self._total}  loss {self._loss:.3f}{val}  {elapsed:.0f} s",
                            markup=False, highlight=False)
        self._said = time.monotonic()
