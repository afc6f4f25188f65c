"""The neck-width rule, kept free of Keras so that option parsing (train.py --resume, compare.py)
can use it before TensorFlow starts (utils.console.start must run first)."""
from __future__ import annotations


def check_neck_width(neck_width, what: str = "neck_width") -> float:
    """``neck_width`` as a float in (0, 4]; anything else is a ValueError naming ``what``."""
    try:
        value = float(neck_width)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {neck_width!r}") from None
    if not 0.0 < value <= 4.0:  # also rejects NaN
        raise ValueError(f"{what} must be in (0, 4] (a multiplier of 128/256/512 channels), got {neck_width!r}")
    return value


def effective_neck_width(alpha: float, neck_width: float | None) -> float:
    """The neck's width multiplier: ``neck_width``, or the alpha when it has none of its own."""
    return float(alpha) if neck_width is None else float(neck_width)
