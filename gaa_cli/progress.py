"""Training progress on stderr: a Rich bar with epoch, step, loss and validation accuracy."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["TrainProgress"]


class TrainProgress:
    """A progress bar over the optimiser steps of a run; `disable` shows nothing."""

    def __init__(self, console: Console, total_steps: int, done_steps: int, disable: bool = False) -> None:
        self._bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val acc {task.fields[val]}"),
            TimeRemainingColumn(),
            console=console,
            disable=disable,
            transient=False,
        )
        self._task = self._bar.add_task("train", total=total_steps, completed=done_steps, epoch="-", loss="-", val="-")

    def __enter__(self) -> TrainProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def step(self, epoch: int, epochs: int, mean_loss: float) -> None:
        self._bar.update(self._task, advance=1, epoch=f"{epoch}/{epochs}", loss=f"{mean_loss:.3f}")

    def validated(self, val_acc: float) -> None:
        self._bar.update(self._task, val=f"{val_acc:.3f}")
