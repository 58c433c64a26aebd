"""Sysctls of the current network namespace, read and written through /proc/sys.

A path is relative to /proc/sys (``net/mptcp/enabled``); ``sysctl_name``
gives the dotted name for messages. ``change_sysctl`` remembers the value it
first found, and ``restore_sysctls`` puts those values back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

PROC_SYS = "/proc/sys"


def sysctl_name(path: str) -> str:
    """The dotted name of a sysctl path: net/ipv4/tcp_syncookies -> net.ipv4.tcp_syncookies."""
    return path.replace("/", ".")


def read_sysctl(path: str) -> str:
    with open(os.path.join(PROC_SYS, path), encoding="ascii") as f:
        return f.read().strip()


def write_sysctl(path: str, value: str) -> None:
    with open(os.path.join(PROC_SYS, path), "w", encoding="ascii") as f:
        f.write(value)


def change_sysctl(path: str, value: str, saved: dict[str, str], log: logging.Logger) -> None:
    """Set a sysctl to ``value``, first keeping in ``saved`` what it was before the first change."""
    old = read_sysctl(path)
    saved.setdefault(path, old)
    if old != value:
        write_sysctl(path, value)
        log.info("sysctl %s: %s -> %s", sysctl_name(path), old, value)


def restore_sysctls(saved: dict[str, str], attempt: Callable[..., None]) -> None:
    """Write back every value in ``saved``, each as one undo step (``Undo.attempt``), and forget them."""
    for path, value in saved.items():
        attempt(f"restoring sysctl {sysctl_name(path)}", write_sysctl, path, value)
    saved.clear()
