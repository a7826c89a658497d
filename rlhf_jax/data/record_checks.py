"""Checks of the values inside a record that a hostile or broken file can get wrong: JSON that
Python cannot parse (nesting beyond its recursion limit, integers beyond its digit limit),
ratings beyond a float and ranks beyond int32 or the number of responses. Each is a
`DataFormatError` naming the place (`where`, "file:line"), the field and what is allowed."""
from __future__ import annotations

import json
import math
import sys


class DataFormatError(ValueError):
    """A data file or one of its records is malformed."""


def json_problem(e: Exception) -> str:
    """What is wrong with text that `json.loads` refused with `e` (a `ValueError`, such as an
    integer beyond Python's digit limit, or the `RecursionError` of nesting deeper than its
    recursion limit), for a message."""
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg})"
    if isinstance(e, RecursionError):
        return (f"not readable JSON (nested deeper than Python's limit of about "
                f"{sys.getrecursionlimit()} levels)")
    if "integer string conversion" in str(e):  # a literal beyond sys.get_int_max_str_digits()
        return (f"not readable JSON (an integer with more than {sys.get_int_max_str_digits()} "
                "digits)")
    return f"not valid JSON ({e})"


def rating_value(value, name: str, where: str, rating_range) -> float:
    """A rating as a float within the declared `rating_range` = (low, high): a number, or a
    string holding one (UltraFeedback writes its ratings as strings)."""
    low, high = rating_range
    allowed = f"a finite number in the declared range [{low}, {high}]"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise DataFormatError(f"{where}: {name}={value!r} is not a number; expected "
                                  f"{allowed}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataFormatError(f"{where}: {name} must be {allowed}, got {type(value).__name__}")
    try:
        as_float = float(value)
    except OverflowError:  # an integer beyond a float's range (about 1.8e308)
        raise DataFormatError(f"{where}: {name} is an integer of {len(str(abs(value)))} "
                              f"digits, beyond a float; expected {allowed}") from None
    if not math.isfinite(as_float):
        raise DataFormatError(f"{where}: {name} must be {allowed}, got {value}")
    if not low <= as_float <= high:
        raise DataFormatError(f"{where}: {name}={value} is outside the declared range "
                              f"[{low}, {high}]")
    return as_float


def check_ranks(ranks, num_responses: int, where: str) -> list[int]:
    """`ranks` of a ranking record with `num_responses` responses: ints in [0, num_responses]
    (0 = best, ties allowed; 1-based ranks end at num_responses), not all tied. Stored as int32,
    so nothing beyond that range reaches the dataset."""
    if not isinstance(ranks, list) or len(ranks) != num_responses or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        raise DataFormatError(f"{where}: field 'ranks' must be {num_responses} non-negative "
                              "ints (0 = best, ties allowed)")
    for i, r in enumerate(ranks):
        if not 0 <= r <= num_responses:
            shown = r if abs(r) < 10**12 else f"an integer of {len(str(abs(r)))} digits"
            raise DataFormatError(f"{where}: field 'ranks'[{i}] is {shown}; a rank among "
                                  f"{num_responses} responses is in [0, {num_responses}] "
                                  "(0 = best)")
    if len(set(ranks)) < 2:
        raise DataFormatError(f"{where}: field 'ranks' ties every response; nothing is "
                              "preferred")
    return ranks
