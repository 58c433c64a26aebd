"""The controller's runtime state on disk (``controller.state_file``), so a restart carries on where it was.

What the API changed on top of the YAML file (drains, activations, added and
removed DIPs), each DIP's health and every slot still in transition, as one
JSON document. The YAML stays the base: what is saved is the difference, so
an edit to the YAML shows through. Times are saved as wall-clock seconds and
turned back into the core's monotonic clock on load.

Writes are atomic: a temporary file in the same directory, fsynced, renamed
over the old one, then the directory fsynced. A crash leaves the old file or
the new one, never half of either. The file is created 0600.
"""

from __future__ import annotations

import json
import os
import tempfile

from mptcp_lb.config import Config, load_config, with_runtime_changes
from mptcp_lb.slots import Transition

VERSION = 1


class StateFileError(ValueError):
    """The state file cannot be read back; the message names the file and what is wrong."""


def encode(state: dict, monotonic_now: float, wall_now: float) -> dict:
    """``LbCore.runtime_state()`` as a JSON document, times on the wall clock."""
    def wall(t):
        return None if t is None else t - monotonic_now + wall_now

    return {
        "version": VERSION,
        "saved_at": wall_now,
        "changes": state["changes"],
        "health": [{"vip": vip, "dip": dip, "state": h["state"], "since": wall(h["since"])}
                   for (vip, dip), h in sorted(state["health"].items())],
        "transitions": {vip: [[slot, t.previous, wall(t.until)] for slot, t in sorted(ts.items())]
                        for vip, ts in state["transitions"].items()},
    }


def decode(doc, monotonic_now: float, wall_now: float, source: str = "state file") -> dict:
    """A document ``encode`` made, back in the core's terms (``LbCore(restored=...)`` and the changes)."""
    def mono(t):
        return None if t is None else float(t) - wall_now + monotonic_now

    try:
        if doc.get("version") != VERSION:
            raise StateFileError(f"{source}: version {doc.get('version')!r}, expected {VERSION}")
        health = {}
        for h in doc["health"]:
            if h["state"] not in ("up", "down"):
                raise StateFileError(f"{source}: health state {h['state']!r} is not up or down")
            health[(str(h["vip"]), int(h["dip"]))] = {"state": h["state"], "since": mono(h["since"])}
        transitions = {str(vip): {int(slot): Transition(previous=int(prev), until=mono(until))
                                  for slot, prev, until in ts}
                       for vip, ts in doc["transitions"].items()}
        changes = doc["changes"]
    except StateFileError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise StateFileError(f"{source}: not a state file this controller wrote ({type(e).__name__}: {e})") from e
    return {"changes": changes, "health": health, "transitions": transitions}


def load(path: str, monotonic_now: float, wall_now: float) -> dict | None:
    """The saved state, or None if there is no file yet."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"{path}: cannot read: {e.strerror}") from e
    except ValueError as e:
        raise StateFileError(f"{path}: not valid JSON: {e}") from e
    return decode(doc, monotonic_now, wall_now, source=path)


def save(path: str, state: dict, monotonic_now: float, wall_now: float) -> None:
    """Replace the file atomically with ``state`` (``LbCore.runtime_state()``)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(encode(state, monotonic_now, wall_now), f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def restore(config_path: str, monotonic_now: float, wall_now: float) -> tuple[Config, Config, dict | None]:
    """(the YAML config, the config with the saved changes on it, the saved health and transitions).

    ConfigError or StateFileError name what does not fit: a controller must
    not start half-restored, silently reactivating what an operator drained.
    """
    base = load_config(config_path)
    path = base.controller.state_file
    saved = load(path, monotonic_now, wall_now) if path else None
    if saved is None:
        return base, base, None
    return base, with_runtime_changes(base, saved["changes"], source=path), saved


__all__ = ["StateFileError", "encode", "decode", "load", "save", "restore"]
