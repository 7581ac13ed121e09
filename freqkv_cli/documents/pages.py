"""Page-range specs such as ``3-40``, ``1,3,5-7`` or ``5-``."""

from __future__ import annotations

import re

from freqkv_cli.errors import UsageError

# One item: "7", "3-40", "5-" (to the end) or "-4" (from the start). En dashes
# count as hyphens because specs get pasted from documents.
_SINGLE_RE = re.compile(r"\d+")
_RANGE_RE = re.compile(r"(\d+)?\s*[-\u2013]\s*(\d+)?")
_EXAMPLES = "use e.g. 3-40, 1,3,5-7 or 5-"


def parse_page_range(spec: str, page_count: int) -> list[int]:
    """Expand a 1-based page-range spec into sorted, unique page numbers.

    Raises UsageError for a malformed spec, page 0, a reversed range, or a page
    past ``page_count``.
    """
    if not spec.strip():
        raise UsageError(f"invalid page range '{spec}': it is empty; {_EXAMPLES}")
    items = [item.strip() for item in spec.split(",")]
    if any(not item for item in items):
        raise UsageError(f"invalid page range '{spec}': stray comma; {_EXAMPLES}")
    selected: set[int] = set()
    for item in items:
        if _SINGLE_RE.fullmatch(item):
            first = last = int(item)
        elif (match := _RANGE_RE.fullmatch(item)) and any(match.groups()):
            first = int(match.group(1)) if match.group(1) else 1
            last = int(match.group(2)) if match.group(2) else page_count
        else:
            raise UsageError(f"invalid page range '{spec}': cannot read '{item}'; {_EXAMPLES}")
        if first < 1 or last < 1:
            raise UsageError(f"invalid page range '{spec}': pages are numbered from 1; {_EXAMPLES}")
        if last > page_count or first > page_count:
            plural = "page" if page_count == 1 else "pages"
            raise UsageError(
                f"invalid page range '{spec}': '{item}' is past the end, the PDF has {page_count} {plural}; "
                f"use pages 1-{page_count}"
            )
        if first > last:
            raise UsageError(f"invalid page range '{spec}': '{item}' runs backwards; write {last}-{first}")
        selected.update(range(first, last + 1))
    return sorted(selected)
