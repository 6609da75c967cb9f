"""Deterministic assignment without storage: hash(salt, user) -> a point in [0, 1) -> an arm.

The point is the first 8 bytes of BLAKE2b over the salt and the user id's text, so every replica, process and
machine computes the same arm for the same user, and an unknown user (never seen, no features) is assigned like
any other. Two hashes are used: the traffic hash (salted by the scenario, the same for every experiment) places a
user in at most one running experiment (`TrafficConfig` slices do not overlap); the experiment's own hash (salted
by its `salt`) picks the arm, so arms are independent of which slice a user fell in.

Ids are hashed as text: `12` and `"12"` are the same user, as the event contract treats them (`events.id_type`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

_SCALE = float(2**64)


def unit_point(salt: str, user: Any) -> float:
    """The user's point in [0, 1) under `salt`."""
    salt_bytes = salt.encode("utf-8", "surrogatepass")
    message = len(salt_bytes).to_bytes(4, "big") + salt_bytes + f"{user}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(message, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def unit_points(salt: str, users: Iterable[Any]) -> np.ndarray:
    """`unit_point` of many users (the simulations and the SRM check use it on whole populations)."""
    return np.fromiter((unit_point(salt, u) for u in users), dtype=np.float64)


def traffic_salt(scenario: str) -> str:
    return f"traffic:{scenario}"


def pick(point: float | np.ndarray, shares: Sequence[float]) -> Any:
    """The arm index whose share interval holds `point` (arms with share 0 get nobody). Shares are cumulated in
    arm order, so a change to one arm's share moves only the users between the boundaries that moved."""
    bounds = np.cumsum(np.asarray(shares, dtype=np.float64))
    bounds[-1] = np.inf  # rounding never leaves a user without an arm
    return np.searchsorted(bounds, point, side="right")


def in_slice(point: float, offset: float, share: float) -> bool:
    return offset <= point < offset + share
