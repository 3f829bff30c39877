"""Reading a CSV with a ``date`` column into timestamps and float64 values.

Dimensions: n data rows of the file, N variate columns.

Every check names the file (or the label given), the line as an editor shows it (1-based,
the header included, blank lines counted) and the column of the first bad cell. Nothing is
imputed: an empty, ``NaN``, infinite or non-numeric cell is an error.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

import numpy as np

__all__ = [
    "ETT_COLUMNS",
    "PathLike",
    "Table",
    "parse_date",
    "parse_table",
    "read_table",
]

PathLike: TypeAlias = str | os.PathLike[str]

ETT_COLUMNS: tuple[str, ...] = ("date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
# what datetime.fromisoformat does not read but CSV exports often hold
_SLASH_FORMATS = ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d")


@dataclass(frozen=True)
class Table:
    """A parsed CSV: variate names, timestamps and values, rows in file order."""

    columns: tuple[str, ...]  # the N variate names, in file order
    dates: np.ndarray  # [n] datetime64[s], strictly increasing
    values: np.ndarray  # [n, N] float64, all finite


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
    """Read a CSV file (UTF-8, a byte-order mark allowed); see ``parse_table``."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return parse_table(fh, ett=ett, label=str(path))


def parse_table(lines: Iterable[str], *, ett: bool, label: str) -> Table:
    """Parse CSV lines with a ``date`` column; every other column is a variate (file order).

    Args:
        lines: the file's lines (an open text file, or ``io.StringIO`` of downloaded text).
        ett: demand exactly the ETT header ``date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT``.
        label: what the messages call the source (the file's path).

    Returns:
        Table with dates ``[n]`` and values ``[n, N]``. Blank lines are skipped.

    Raises:
        ValueError: naming ``label``, the line and the column of the first problem.
    """
    p = label
    rows: list[list[str]] = []
    lines_of: list[int] = []  # the 1-based line of each row, for messages
    reader = csv.reader(lines)
    header: list[str] | None = None
    header_line = 0
    for row in reader:
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip() for c in row]
            header_line = reader.line_num
            continue
        rows.append(row)
        lines_of.append(reader.line_num)
    if header is None:
        raise ValueError(f"{p}: the file is empty; expected a header line with a 'date' column")
    _check_header(header, header_line, ett=ett, label=p)
    if not rows:
        raise ValueError(f"{p}: no data rows after the header on line {header_line}")

    n_cols = len(header)
    for row, line in zip(rows, lines_of, strict=True):
        if len(row) != n_cols:
            raise ValueError(
                f"{p}: line {line}: {len(row)} cell(s), expected {n_cols} (one per header "
                f"column: {','.join(header)})"
            )
    di = header.index("date")
    vcols = [j for j in range(n_cols) if j != di]
    names = tuple(header[j] for j in vcols)

    parsed: list[datetime] = []
    for row, line in zip(rows, lines_of, strict=True):
        dt = parse_date(row[di])
        if dt is None:
            raise ValueError(
                f"{p}: line {line}, column 'date': cannot parse {row[di]!r} as a timestamp; "
                f"expected ISO 8601 such as '2016-07-01 00:00:00' (or 'YYYY/MM/DD HH:MM:SS')"
            )
        parsed.append(dt)
    dates = np.array(parsed, dtype="datetime64[s]")  # [n]
    later = dates[1:] > dates[:-1]  # [n - 1]
    if not later.all():
        k = int(np.argmin(later)) + 1
        raise ValueError(
            f"{p}: line {lines_of[k]}, column 'date': {rows[k][di]!r} is not later than the "
            f"previous row's {rows[k - 1][di]!r}; expected strictly increasing timestamps (sort "
            f"the file by date)"
        )

    cells = [[row[j] for j in vcols] for row in rows]  # [n][N] strings
    # one vectorised conversion for the common, clean file; the cell-by-cell walk below runs
    # only to say where a bad cell is
    try:
        values: np.ndarray | None = np.array(cells, dtype=np.float64)  # [n, N]
    except ValueError:
        values = None
    if values is None or not np.isfinite(values).all():
        for row, line in zip(cells, lines_of, strict=True):
            for name, cell in zip(names, row, strict=True):
                try:
                    v = float(cell)
                except ValueError:
                    v = math.nan
                if not math.isfinite(v):
                    what = "an empty cell" if not cell.strip() else repr(cell)
                    raise ValueError(
                        f"{p}: line {line}, column {name!r}: {what}; expected a finite number "
                        f"(missing values are not filled in; clean or impute the file first)"
                    )
        # every cell is finite to float() although numpy's parser refused one: use float()'s
        values = np.array([[float(c) for c in row] for row in cells], dtype=np.float64)
    return Table(columns=names, dates=dates, values=values)


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
