"""Value types every edge shares (the HTTP API's request bodies, the event contract): what a model, a store or a
JSON answer can hold, refused field by field before anything else sees it.

- Integers outside int64 (no Arrow column, store or embedding can hold 2**63; in a union, pydantic would quietly
  take it as a float).
- Strings that are not valid Unicode (JSON allows a lone UTF-16 surrogate escape such as "\\ud800"; it cannot be
  encoded, stored, or written back as UTF-8).
- NaN and infinities (JSON cannot carry them, and a model fed one answers NaN).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictFloat, StrictInt, StrictStr

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def valid_unicode(s: str) -> str:
    """`s` unchanged when it can be encoded as UTF-8 (a lone surrogate cannot)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("invalid Unicode: a lone surrogate (\\ud800-\\udfff) that no text encoding can hold") from None
    return s


def within_int64(v: Any) -> Any:
    """Integers outside int64 are refused before a union could take them as floats (2**63 is a valid float)."""
    if isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
        raise ValueError(f"integer outside int64 ({INT64_MIN} .. {INT64_MAX})")
    return v


Int64 = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
Finite = Annotated[StrictFloat, Field(allow_inf_nan=False)]
Text = Annotated[StrictStr, AfterValidator(valid_unicode)]
Number = Annotated[Int64 | Finite, BeforeValidator(within_int64)]


def text(max_length: int) -> Any:
    """A string of at most `max_length` characters that is valid Unicode."""
    return Annotated[StrictStr, Field(max_length=max_length), AfterValidator(valid_unicode)]


def printable(s: str) -> str:
    """`s` with whatever UTF-8 cannot carry replaced: for messages that quote what a client sent."""
    return s.encode("utf-8", "replace").decode("utf-8")
