"""Reading a CSV with a ``date`` column into timestamps and float64 values, in one checked pass.

Dimensions: n data rows of the file, N variate columns.

Every check names the file (or the label given), the line as an editor shows it (1-based,
the header included, blank lines counted) and the column of the first bad cell. Nothing is
imputed: an empty, ``NaN``, infinite or non-numeric cell is an error. The file is read as
UTF-8 (a byte-order mark allowed) in chunks, line by line: bytes that are not UTF-8 (a Latin-1
or UTF-16 file, a binary file), a NUL character, a quoted cell that runs past the end of its
line, a cell longer than :data:`MAX_CELL_CHARS`, a line longer than :data:`MAX_LINE_BYTES` or a
header of more than :data:`MAX_COLUMNS` columns stop the reading there, before the rest of the
file is read.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import numpy as np

__all__ = [
    "ETT_COLUMNS",
    "MAX_CELL_CHARS",
    "MAX_COLUMNS",
    "MAX_LINE_BYTES",
    "PathLike",
    "Table",
    "parse_bytes",
    "parse_date",
    "parse_table",
    "read_table",
]

PathLike: TypeAlias = str | os.PathLike[str]

ETT_COLUMNS: tuple[str, ...] = ("date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
# what datetime.fromisoformat does not read but CSV exports often hold
_SLASH_FORMATS = ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d")

# Limits of what a CSV may hold, far above real data (a timestamp or a number is under 40
# characters, ETT has 8 columns) and checked as the file is read, so that a malformed or
# hostile file is refused at its first bad line instead of filling memory
MAX_CELL_CHARS = 1000  # characters in one cell (a column name included)
MAX_COLUMNS = 100_001  # the date and up to 100000 variates, ForecastConfig's limit
MAX_LINE_BYTES = 16 << 20  # bytes in one line
_CHUNK = 1 << 16
_EOL = re.compile(rb"\r\n|\r|\n")  # what csv and universal newlines end a line at
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_QUOTE_OR_COMMA = re.compile(r'[",]')


@dataclass(frozen=True)
class Table:
    """A parsed CSV: variate names, timestamps and values, rows in file order."""

    columns: tuple[str, ...]  # the N variate names, in file order
    dates: np.ndarray  # [n] datetime64[s], strictly increasing
    values: np.ndarray  # [n, N] float64, all finite
    lines: np.ndarray | None = None  # [n] int64: each row's 1-based line in the file


def parse_date(text: str) -> datetime | None:
    """ISO 8601 or ``YYYY/MM/DD[ HH:MM[:SS]]`` as a naive datetime; None if neither."""
    s = text.strip()
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        dt = None
        for fmt in _SLASH_FORMATS:
            try:
                dt = datetime.strptime(s, fmt)
                break
            except ValueError:
                continue
    if dt is not None and dt.tzinfo is not None:
        dt = dt.replace(tzinfo=None)  # wall-clock fields, as the time features read them
    return dt


def read_table(path: PathLike, *, ett: bool) -> Table:
    """Read a CSV file (UTF-8, a byte-order mark allowed) in chunks; see ``parse_table``."""
    with open(path, "rb") as fh:
        return _parse(_byte_lines(fh.read, label=str(path)), ett, str(path))


def parse_bytes(data: bytes, *, ett: bool, label: str) -> Table:
    """A CSV held in memory (a download) read exactly as ``read_table`` reads a file."""
    view = memoryview(data)
    pos = 0

    def read(size: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos : pos + size])
        pos += len(chunk)
        return chunk

    return _parse(_byte_lines(read, label=label), ett, label)


def parse_table(lines: Iterable[str], *, ett: bool, label: str) -> Table:
    """Parse CSV lines with a ``date`` column; every other column is a variate (file order).

    Args:
        lines: the file's lines, one row each (an open text file, or ``io.StringIO`` of text);
            a line's ending is dropped.
        ett: demand exactly the ETT header ``date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT``.
        label: what the messages call the source (the file's path).

    Returns:
        Table with dates ``[n]``, values ``[n, N]`` and each row's line ``[n]``. Blank lines are
        skipped.

    Raises:
        ValueError: naming ``label``, the line and the column of the first problem.
    """
    return _parse((line.rstrip("\r\n") for line in lines), ett, label)


def _byte_lines(read: Callable[[int], bytes], *, label: str) -> Iterator[bytes]:
    """The lines of a byte stream, their endings (``\\n``, ``\\r\\n``, ``\\r``) dropped, read
    ``_CHUNK`` bytes at a time and split in C; ValueError as soon as a line passes
    ``MAX_LINE_BYTES``."""
    pending = bytearray()  # the start of a line whose end has not been read yet
    line = 1  # the line pending starts
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            if pending:
                _check_line_length(len(pending), line, label)
                yield bytes(pending)
            return
        # the chunk's last line ending; a \r last in it may be half of a \r\n: it waits
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r", 0, len(chunk) - 1))
        if cut < 0:
            pending += chunk
            _check_line_length(len(pending), line, label)
            continue
        pending += chunk[: cut + 1]
        lines = bytes(pending).splitlines()  # bytes split at \n, \r\n and \r only
        pending = bytearray(chunk[cut + 1 :])
        longest = max(map(len, lines))
        if longest > MAX_LINE_BYTES:
            _check_line_length(longest, line + [len(x) for x in lines].index(longest), label)
        yield from lines
        line += len(lines)


def _check_line_length(n_bytes: int, line: int, label: str) -> None:
    if n_bytes > MAX_LINE_BYTES:
        raise ValueError(
            f"{label}: line {line}: longer than {MAX_LINE_BYTES} bytes (the reader's limit, "
            "MAX_LINE_BYTES); expected a CSV file of one row per line"
        )


def _decoded(raw: bytes, line: int, header: list[str] | None, label: str) -> str:
    """A byte line as UTF-8 text (a byte-order mark dropped from line 1); ValueError naming
    the line and the column of the first bytes that are not UTF-8."""
    if line == 1:
        if raw.startswith(_UTF16_BOMS):
            raise ValueError(
                f"{label}: line 1, column 1: a UTF-16 byte-order mark ({raw[:2]!r}); expected "
                "a UTF-8 text file (save it as UTF-8)"
            )
        raw = raw.removeprefix(_UTF8_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        before = raw[: err.start].decode("utf-8", "replace")
        bad = raw[err.start : min(err.end, err.start + 4)]
        raise ValueError(
            f"{_where(label, line, header, _column_at(before))}: bytes that are not UTF-8 "
            f"({bad!r} at character {len(before) + 1} of the line); expected a UTF-8 text file "
            "(a binary, Latin-1 or UTF-16 file? save it as UTF-8)"
        ) from None


def _spans(text: str, limit: int) -> tuple[list[tuple[int, int]], bool]:
    """The ``(start, end)`` of each cell of a line as csv's default dialect splits it (a quote
    opens a quoted cell only at its start, ``""`` inside one is a quote), at most ``limit + 1``
    of them, and whether a quoted cell is left open at the end."""
    spans: list[tuple[int, int]] = []
    start, quoted, skip = 0, False, -1
    for m in _QUOTE_OR_COMMA.finditer(text):
        pos = m.start()
        if pos == skip:
            continue
        if m.group() == '"':
            if quoted and text.startswith('""', pos):
                skip = pos + 1  # an escaped quote
            elif quoted:
                quoted = False
            elif pos == start:
                quoted = True
        elif not quoted:
            spans.append((start, pos))
            start = pos + 1
            if len(spans) > limit:
                return spans, False
    spans.append((start, len(text)))
    return spans, quoted


def _column_at(prefix: str) -> int:
    """The 0-based column a line's text ``prefix`` ends in."""
    if '"' not in prefix:
        return prefix.count(",")
    return len(_spans(prefix, MAX_COLUMNS)[0]) - 1


def _where(label: str, line: int, header: list[str] | None, column: int) -> str:
    """``label: line n, column 'name'`` (``column k``, 1-based, before the header is known)."""
    name = repr(header[column]) if header is not None and column < len(header) else column + 1
    return f"{label}: line {line}, column {name}"


def _check_cells(text: str, line: int, header: list[str] | None, label: str) -> None:
    """ValueError for a NUL, a quoted cell left open at the end of the line, more than
    ``MAX_COLUMNS`` cells or a cell longer than ``MAX_CELL_CHARS``; called only on a line
    long enough to hold such a cell, or holding a quote or a NUL."""
    if "\x00" in text:
        col = _column_at(text[: text.index("\x00")])
        raise ValueError(
            f"{_where(label, line, header, col)}: a NUL character; expected a text file"
        )
    if '"' in text:
        spans, open_quote = _spans(text, MAX_COLUMNS)
    else:  # the common long line: split in C
        lengths = [len(c) for c in text.split(",", MAX_COLUMNS)]
        starts = np.cumsum([0] + [n + 1 for n in lengths[:-1]]).tolist()
        spans, open_quote = [(a, a + n) for a, n in zip(starts, lengths, strict=True)], False
    if len(spans) > MAX_COLUMNS:
        raise ValueError(
            f"{label}: line {line}: more than {MAX_COLUMNS} cells (the reader's limit, "
            "MAX_COLUMNS); expected a date and at most 100000 variates"
        )
    for col, (lo, hi) in enumerate(spans):
        if hi - lo > MAX_CELL_CHARS:
            raise ValueError(
                f"{_where(label, line, header, col)}: a cell of {hi - lo} characters; expected "
                f"at most {MAX_CELL_CHARS} (the reader's limit, MAX_CELL_CHARS)"
            )
    if open_quote:
        raise ValueError(
            f"{_where(label, line, header, len(spans) - 1)}: a quoted cell runs past the end "
            "of the line; expected one row per line (close the quote)"
        )


class _Where:
    """Where ``_checked_lines`` is: the last line's number (1-based) and, once the parser has
    read it, the header that names the columns in messages."""

    def __init__(self) -> None:
        self.line = 0
        self.header: list[str] | None = None


def _checked_lines(lines: Iterable[str | bytes], at: _Where, label: str) -> Iterator[str]:
    """The texts of lines (str, or UTF-8 bytes decoded here), each checked by ``_check_cells``
    where it could hold a bad cell; ``at.line`` follows them."""
    for text in lines:
        at.line += 1
        if isinstance(text, bytes):
            text = _decoded(text, at.line, at.header, label)
        if len(text) > MAX_CELL_CHARS or '"' in text or "\x00" in text:
            _check_cells(text, at.line, at.header, label)
        yield text


def _parse(lines: Iterable[str | bytes], ett: bool, label: str) -> Table:
    """``parse_table`` of the lines of a file (str, or UTF-8 bytes), their endings dropped."""
    header, rows, lines_of = _rows(lines, ett, label)
    di = header.index("date")
    vcols = [j for j in range(len(header)) if j != di]
    names = tuple(header[j] for j in vcols)
    dates = _dates(rows, di, lines_of, label)  # [n]
    cells = [[row[j] for j in vcols] for row in rows]  # [n][N] strings
    values = _values(cells, names, lines_of, label)  # [n, N]
    return Table(
        columns=names, dates=dates, values=values, lines=np.array(lines_of, dtype=np.int64)
    )


def _rows(
    lines: Iterable[str | bytes], ett: bool, label: str
) -> tuple[list[str], list[list[str]], list[int]]:
    """``(header, rows, lines_of)``: the checked header, the data rows as cells (blank lines
    skipped, each as long as the header) and the 1-based line of each row, for messages."""
    rows: list[list[str]] = []
    lines_of: list[int] = []
    at = _Where()
    header_line = 0
    for row in csv.reader(_checked_lines(lines, at, label)):
        if not row or (not row[0].strip() and all(not c.strip() for c in row)):
            continue
        if at.header is None:
            at.header = _header(row, at.line, ett, label)  # names the columns from here on
            header_line = at.line
            continue
        if len(row) != len(at.header):
            _wrong_cell_count(row, at.line, at.header, label)
        rows.append(row)
        lines_of.append(at.line)
    if at.header is None:
        raise ValueError(f"{label}: the file is empty; expected a header line with a 'date' column")
    if not rows:
        raise ValueError(f"{label}: no data rows after the header on line {header_line}")
    return at.header, rows, lines_of


def _header(row: list[str], line: int, ett: bool, label: str) -> list[str]:
    """The header row's names, stripped and checked (``_check_header``)."""
    header = [c.strip() for c in row]
    if len(header) > MAX_COLUMNS:
        raise ValueError(
            f"{label}: line {line} (header): {len(header)} columns; expected at most "
            f"{MAX_COLUMNS} (the reader's limit, MAX_COLUMNS)"
        )
    _check_header(header, line, ett=ett, label=label)
    return header


def _dates(rows: list[list[str]], di: int, lines_of: list[int], label: str) -> np.ndarray:
    """The ``date`` cells (column ``di``) as ``[n]`` datetime64[s], strictly increasing."""
    parsed: list[datetime] = []
    for row, line in zip(rows, lines_of, strict=True):
        dt = parse_date(row[di])
        if dt is None:
            raise ValueError(
                f"{label}: line {line}, column 'date': cannot parse {row[di]!r} as a timestamp; "
                f"expected ISO 8601 such as '2016-07-01 00:00:00' (or 'YYYY/MM/DD HH:MM:SS')"
            )
        parsed.append(dt)
    dates = np.array(parsed, dtype="datetime64[s]")  # [n]
    later = dates[1:] > dates[:-1]  # [n - 1]
    if not later.all():
        k = int(np.argmin(later)) + 1
        raise ValueError(
            f"{label}: line {lines_of[k]}, column 'date': {rows[k][di]!r} is not later than the "
            f"previous row's {rows[k - 1][di]!r}; expected strictly increasing timestamps (sort "
            f"the file by date)"
        )
    return dates


def _values(
    cells: list[list[str]], names: tuple[str, ...], lines_of: list[int], label: str
) -> np.ndarray:
    """The variate cells ``[n][N]`` as ``[n, N]`` float64, every one finite."""
    # one vectorised conversion for the common, clean file; the cell-by-cell walk below runs
    # only to say where a bad cell is
    try:
        values: np.ndarray | None = np.array(cells, dtype=np.float64)  # [n, N]
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all():
        return values
    for row, line in zip(cells, lines_of, strict=True):
        for name, cell in zip(names, row, strict=True):
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                what = "an empty cell" if not cell.strip() else repr(cell)
                raise ValueError(
                    f"{label}: line {line}, column {name!r}: {what}; expected a finite number "
                    f"(missing values are not filled in; clean or impute the file first)"
                )
    # every cell is finite to float() although numpy's parser refused one: use float()'s
    return np.array([[float(c) for c in row] for row in cells], dtype=np.float64)


def _wrong_cell_count(row: list[str], line: int, header: list[str], label: str) -> None:
    """ValueError for a row of the wrong length, naming the first column it lacks or passes."""
    n, n_cols = len(row), len(header)
    where = (
        f"column {header[n]!r} is missing"
        if n < n_cols
        else f"a cell past the last column {header[-1]!r}"
    )
    raise ValueError(
        f"{label}: line {line}: {n} cell(s), expected {n_cols} ({where}; one cell per header "
        f"column: {','.join(header)})"
    )


def _check_header(header: list[str], line: int, *, ett: bool, label: str) -> None:
    """ValueError naming the header line if it is not an ETT header (``ett``) or lacks a date."""
    p = label
    if ett:
        if tuple(header) == ETT_COLUMNS:
            return
        missing = [c for c in ETT_COLUMNS if c not in header]
        extra = [c for c in header if c not in ETT_COLUMNS]
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
        if not problems:
            problems.append("the columns are out of order or repeated")
        raise ValueError(
            f"{p}: line {line} (header): {'; '.join(problems)}; an ETT file has exactly the "
            f"columns {','.join(ETT_COLUMNS)} in this order (got {','.join(header)}). "
            f"For another layout pass protocol='custom'."
        )
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise ValueError(
            f"{p}: line {line} (header): repeated column name(s) "
            f"{', '.join(map(repr, dupes))}; expected one column per name"
        )
    if "date" not in header:
        raise ValueError(
            f"{p}: line {line} (header): no 'date' column; expected a column named "
            f"'date' plus one column per variate (got {','.join(header)})"
        )
    if len(header) < 2:
        raise ValueError(
            f"{p}: line {line} (header): only a 'date' column; expected at least one variate column"
        )
