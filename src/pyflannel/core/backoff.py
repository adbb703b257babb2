"""The one rule for a failing operation that is retried: back off exponentially (capped), and log
the failure once per distinct message — not once per retry — and once more when it works again."""

from __future__ import annotations

import logging


class Backoff:
    """Delays ``first``, twice that, four times, ... capped at ``cap``; ``reset`` after a success."""

    def __init__(self, first: float = 0.2, cap: float = 1.0, factor: float = 2.0) -> None:
        self.first, self.cap, self.factor = first, cap, factor
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


class LogOnce:
    """``error(msg)`` logs only when ``msg`` differs from the last one logged; ``ok(msg)`` logs
    ``msg`` at info once after a failure, and forgets it. ``same`` maps a message to what counts
    as "the same" failure (e.g. its first words, when the wording varies per attempt)."""

    def __init__(self, logger: logging.Logger, level: int = logging.ERROR,
                 same: object = None) -> None:
        self.logger, self.level = logger, level
        self._same = same
        self.last = ""

    @property
    def failing(self) -> bool:
        return bool(self.last)

    def error(self, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless it is the failure already logged; True if it was logged."""
        text = msg % args if args else msg
        key = self._same(text) if callable(self._same) else text
        if key == self.last:
            return False
        self.last = key
        self.logger.log(self.level, "%s", text)
        return True

    def ok(self, msg: str = "", *args: object) -> bool:
        """The operation works (again): log ``msg`` if it had failed; True if it had."""
        if not self.last:
            return False
        self.last = ""
        if msg:
            self.logger.info(msg, *args)
        return True
