"""Putting back what a DIP setup's apply() did: every step tried, the first failure raised."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Undo:
    """Undo steps that keep going past failures.

    ``attempt`` runs one step and logs its failure; leaving the ``with`` block
    raises the first failure (unless the block itself raised).
    """

    def __init__(self, log: logging.Logger):
        self.log = log
        self.errors: list[Exception] = []

    def attempt(self, what: str, fn: Callable[..., None], *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # one failed step must not leave the rest applied
            self.log.error("undo: %s failed: %s", what, e)
            self.errors.append(e)

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.errors:
            raise self.errors[0]


@contextmanager
def rollback_on_failure(undo: Callable[[], None], log: logging.Logger, what: str, *args) -> Iterator[None]:
    """Run the block; if it raises, log that ``what % args`` failed, call ``undo`` and re-raise."""
    try:
        yield
    except Exception:
        log.error(what + " failed; rolling back", *args)
        try:
            undo()
        except Exception:  # logged step by step; the setup failure is the news
            pass
        raise
