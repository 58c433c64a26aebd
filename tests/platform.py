"""Skipping tests the machine cannot run, except in CI, where every test must run."""

from __future__ import annotations

import os

import pytest


def require_platform(missing: str | None, what: str) -> None:
    """Skip when ``missing`` names what this machine lacks for ``what``; in CI, fail instead."""
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{what} platform incomplete in CI: {missing}")
        pytest.skip(missing)
