"""Argument types shared by the command-line modules (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
from typing import Callable


def csv(value: str) -> tuple[str, ...]:
    """``a,b,c`` -> ("a", "b", "c")."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer type with a lower bound (0 for counts and caps, 1 for sizes)."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {n}")
        return n

    return parse


# -- bounded numbers (every number on the command line is checked: finite, in range) ---------------

MAX_ROWS = 100_000_000  # rows a count option may ask for (train size, caps, shard rows)


def int_in(minimum: int, maximum: int, what: str = "an integer") -> Callable[[str], int]:
    """An integer in [minimum, maximum] (``10**30``, ``-1`` or ``2**80`` are one-line errors)."""

    def parse(value: str) -> int:
        text = value.strip()
        if len(text) > 24:
            raise argparse.ArgumentTypeError(f"expected {what} between {minimum} and {maximum}, got {value[:24]!r}...")
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if not minimum <= n <= maximum:
            raise argparse.ArgumentTypeError(f"expected {what} between {minimum} and {maximum}, got {n}")
        return n

    return parse


def float_in(minimum: float, maximum: float, what: str = "a number") -> Callable[[str], float]:
    """A finite float in [minimum, maximum] (``nan``, ``inf`` and ``1e-320`` where 0 is not allowed are errors)."""
    import math

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if not math.isfinite(x) or not minimum <= x <= maximum:
            raise argparse.ArgumentTypeError(f"expected {what} between {minimum:g} and {maximum:g}, got {value!r}")
        return x

    return parse


def weight(value: str) -> tuple[str, float]:
    """``NAME=W`` with a non-empty NAME and a finite weight in (0, 1e6]."""
    import math

    name, sep, w = value.partition("=")
    try:
        if not sep:
            raise ValueError
        x = float(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got {value!r}") from None
    if not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT with a name before '=', got {value!r}")
    if not math.isfinite(x) or x > 1e6:
        raise argparse.ArgumentTypeError(f"weight for {name.strip()!r} must be a finite number <= 1e6, got {w!r}")
    return name.strip(), x


seed = int_in(0, 2**63 - 1, "a seed (integer)")
template_id = int_in(0, 2**31 - 1, "a template id (integer)")
count = int_in(0, MAX_ROWS, "an integer")
positive_count = int_in(1, MAX_ROWS, "a positive integer")
temperature = float_in(0.01, 1000.0, "a temperature")
max_epochs = float_in(0.0, 1e6, "a number of epochs (0 = no limit)")
workers = int_in(0, 1024, "a number of workers (0 = all cores)")
ngram = int_in(0, 1000, "an n-gram length (0 = off)")


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _amount(value: str, units: dict[str, int], what: str, example: str) -> float:
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in units or len(value) > 24:
        raise argparse.ArgumentTypeError(f"expected {what} such as {example}, got {value[:24]!r}")
    return float(match.group(1)) * units[unit]


def size(value: str) -> int:
    """Bytes: ``500M``, ``20G``, ``1.5GiB`` (K, M, G, T are powers of 1000; KiB, MiB, GiB, TiB of 1024)."""
    return int(_amount(value, _SIZE_UNITS, "a size", "500M, 20G or 1.5GiB"))


def age(value: str) -> float:
    """Seconds: ``90s``, ``30m``, ``12h``, ``30d``, ``2w`` (the unit is required: is ``30`` minutes or days?)."""
    return _amount(value, _AGE_UNITS, "an age", "12h, 30d or 2w")
