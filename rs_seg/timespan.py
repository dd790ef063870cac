"""Time ranges as STAC APIs write them: ``START/END``, ``..`` or nothing for an open end.

Used to check a STAC source's ``datetime`` filter when the config is read, and to apply it to
each item, with one reading of the text.
"""

from __future__ import annotations

import datetime as dt
import re

Interval = tuple[dt.datetime | None, dt.datetime | None]


def parse_range(text: str) -> Interval:
    """``START/END`` (``..`` or empty: open), or one date or time, as aware UTC instants.

    A date without a time is the whole day: from its first instant as a start, to its last as
    an end, so ``2024-05-01/2024-05-31`` holds all of May; a time without a zone is UTC.
    Raises ValueError naming the part that is wrong.
    """
    parts = [part.strip() for part in text.split("/")]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or parts == ["", ""]:
        raise ValueError(f"{text!r}: expected START/END, or one date or time")
    start, end = (_instant(part, text, end=i == 1) for i, part in enumerate(parts))
    if start is not None and end is not None and start > end:
        raise ValueError(f"{text!r}: the start is after the end")
    return start, end


def _instant(part: str, text: str, end: bool) -> dt.datetime | None:
    if part in ("", ".."):
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", part):
            day = dt.datetime.fromisoformat(part).replace(tzinfo=dt.UTC)
            return day + dt.timedelta(days=1, microseconds=-1) if end else day
        moment = dt.datetime.fromisoformat(part)
    except ValueError:
        raise ValueError(f"{text!r}: {part!r} is not an ISO 8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
