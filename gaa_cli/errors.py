"""The errors the tool reports to its users.

Each one carries a message meant to be read by a person: what is wrong, where
(file, column, row) and what to do about it. The CLI prints it as one line on
stderr and exits with `exit_code`; nothing else should print a traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "GaaError",
    "UsageError",
    "DataError",
    "CheckpointError",
    "TrainingError",
    "Interrupted",
    "Terminated",
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
]

EXIT_OK = 0
EXIT_RUNTIME = 1  # a failure while running: diverged training, device failure, I/O error
EXIT_USAGE = 2  # bad usage or bad input: the user can fix the command or the file
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM, as sent by `timeout`, job schedulers and container stops: 128 + 15


class GaaError(Exception):
    """Base class: a problem the user can act on, reported without a traceback."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, notes: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.notes = list(notes or [])  # printed before the error: what was decided on the way (e.g. the layout)

    def __str__(self) -> str:
        return self.message


class UsageError(GaaError):
    """An option or argument has a value the tool cannot use."""


class DataError(GaaError):
    """A data file is missing, unreadable or not shaped as expected."""


class CheckpointError(GaaError):
    """A checkpoint is missing, corrupted, untrusted or from an unknown format."""


class TrainingError(GaaError):
    """Training failed at run time (for example the loss became NaN)."""

    exit_code = EXIT_RUNTIME


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving a resumable checkpoint at `path`."""

    def __init__(self, path: Path, terminated: bool = False) -> None:
        super().__init__(str(path))
        self.path = path
        self.exit_code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        self.by = "SIGTERM" if terminated else "Ctrl-C"


class Terminated(BaseException):
    """SIGTERM outside the training loop: stop at once, like Ctrl-C (a BaseException, as KeyboardInterrupt is)."""
