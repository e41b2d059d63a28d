"""Argument types shared by the command-line modules (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
from typing import Callable


def csv(value: str) -> tuple[str, ...]:
    """``a,b,c`` -> ("a", "b", "c")."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def weight(value: str) -> tuple[str, float]:
    """``NAME=W`` -> (NAME, W)."""
    name, sep, w = value.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got {value!r}") from None


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
