"""Wording helpers for one-line error messages and notes."""

from __future__ import annotations

__all__ = ["quote", "quoted_names", "first_line", "plural"]


def quote(value: object, limit: int = 40) -> str:
    """A value quoted for a one-line message, truncated."""
    s = value if isinstance(value, str) else str(value)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return repr(s)


def quoted_names(names: list, limit: int = 8) -> str:
    """Quoted names, abbreviated after `limit`."""
    shown = ", ".join(quote(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", … ({len(names)} in all)"
    return shown or "(none)"


def first_line(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"
