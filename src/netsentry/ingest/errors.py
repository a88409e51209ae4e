"""Per-line ingest errors and the result type shared by all ingest parsers.

Parsers never stop at the first bad line: they keep every good line and report each
bad one as a :class:`LineError` that says where it was and what was wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netsentry.model import Batch

#: Offending lines are kept in errors up to this many characters.
MAX_LINE_CHARS = 200


@dataclass(frozen=True)
class LineError:
    """One rejected input line.

    Attributes
    ----------
    source : str
        Where the line came from: a file name, ``"stdin"``, ``"http"``...
    line_no : int
        1-based line number in ``source``.
    reason : str
        What is wrong with the line, e.g. ``"missing field set"``.
    line : str
        The offending line, truncated to :data:`MAX_LINE_CHARS` characters.
    """

    source: str
    line_no: int
    reason: str
    line: str

    @classmethod
    def make(cls, source: str, line_no: int, reason: str, line: str) -> LineError:
        """Build an error, truncating ``line`` to :data:`MAX_LINE_CHARS`."""
        return cls(source, line_no, reason, line[:MAX_LINE_CHARS])

    def __str__(self) -> str:
        return f"{self.source}:{self.line_no}: {self.reason}: {self.line!r}"


@dataclass
class ParseResult:
    """What a parser produced from one input.

    Attributes
    ----------
    batch : Batch
        The observations of all good lines.
    errors : list of LineError
        One entry per rejected line, in input order.
    lines : int
        Data lines seen (blank and comment lines are not counted).
    ignored_fields : int
        String and boolean fields that were skipped (only numbers are observations).
    """

    batch: Batch
    errors: list[LineError] = field(default_factory=list)
    lines: int = 0
    ignored_fields: int = 0
