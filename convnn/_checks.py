"""Argument validation shared by the package: every bad argument raises a ValueError
that names the argument, the value it got and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_known(what: str, names: Iterable, allowed: Iterable, context: str = "") -> None:
    """Raise unless every one of ``names`` is in ``allowed`` (options, fields, keys: a typo
    must not pass silently)."""
    allowed = list(allowed)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}{context}; allowed: {allowed}")


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """Raise unless ``value`` is an int (not bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_fraction(name: str, value, low: float = 0.0, high: float = 1.0) -> float:
    """Raise unless ``low <= value <= high``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_rank(name: str, x: torch.Tensor, rank: int, layout: str) -> None:
    """Raise unless tensor ``x`` has ``rank`` dimensions (``layout`` like '[B, C, H, W]')."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must have shape {layout} ({rank} dims), got shape {tuple(x.shape)}")


def check_size(name: str, x: torch.Tensor, dim: int, expected: int, layout: str) -> None:
    """Raise unless ``x.shape[dim] == expected``."""
    if x.shape[dim] != expected:
        raise ValueError(
            f"{name} must have size {expected} in dim {dim} of {layout}, got shape {tuple(x.shape)}"
        )


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise unless ``value`` is divisible by ``by``."""
    if by <= 0 or value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by}")


def ensure_sequence(value, n: int) -> Sequence:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
