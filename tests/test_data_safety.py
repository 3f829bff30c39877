"""Data read in one checked pass, sizes bounded before allocation, and a data spec that names
data but never a file to open (issue 20). Every bad file gets one line naming the file, the
line and the column; every size a file or a spec controls is checked before anything of that
size exists; downloads are capped. No network: downloads go through fake openers.

Dimensions: n rows of a file, N variates, L lookback, H horizon."""

from __future__ import annotations

import csv
import io
import re
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from diffsample.forecast.data import (
    ForecastSplit,
    check_data_spec,
    download_ett,
    load_csv,
    reload_data,
    synthetic_dataset,
)
from diffsample.forecast.data import download as download_module
from diffsample.forecast.data import reader as reader_module
from diffsample.forecast.data import splits as splits_module
from diffsample.forecast.data.reader import MAX_CELL_CHARS, parse_table, read_table
from diffsample.forecast.data.splits import build_dataset, custom_borders, split_borders
from diffsample.forecast.data.synthetic import synthetic_values

HEADER = ["date", "a", "b"]


def rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    start = datetime(2021, 1, 1)
    return [
        [(start + timedelta(hours=i)).isoformat(sep=" "), f"{rng.normal():.4f}", f"{i % 17}"]
        for i in range(n)
    ]


def write_csv(path: Path, header=HEADER, body=None, n: int = 200) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows(n) if body is None else body)
    return path


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- encodings, cells, lines
@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        # a Latin-1 file: 'é' is one byte, 0xe9, not UTF-8
        (
            "latin1.csv",
            "date,caf\xe9,b\n2021-01-01 00:00:00,1,2\n".encode("latin-1"),
            r"line 1, column 2: bytes that are not UTF-8 \(b'\\xe9' at character 9 of the line\)",
        ),
        (
            "cell.csv",
            b'date,a,b\n2021-01-01 00:00:00,1,2\n2021-01-01 01:00:00,"x",3\xff4\n',
            r"line 3, column 'b': bytes that are not UTF-8 \(b'\\xff' at character 26 ",
        ),
        (
            "utf16.csv",
            "date,a\n2021-01-01 00:00:00,1\n".encode("utf-16"),
            r"line 1, column 1: a UTF-16 byte-order mark \(b'\\xff\\xfe'\); expected a UTF-8",
        ),
        (
            "binary.csv",
            bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8)),
            r"line \d+, column \d+: bytes that are not UTF-8",
        ),
    ],
    ids=["latin1", "cell", "utf16", "binary"],
)
def test_undecodable_bytes_name_the_file_line_and_column(tmp_path, name, content, pattern):
    """issue 20: binary, Latin-1 and UTF-16 files gave bare decode errors (docs/data.md
    promises file, line and column)."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_csv(path)
    message = one_line(info)
    assert message.startswith(f"{path}: line "), message
    assert re.search(pattern, message), message
    assert "save it as UTF-8" in message


def test_an_over_long_cell_is_named_before_csv_sees_it(tmp_path):
    """issue 20: a 200,000-character cell gave csv's bare 'field larger than field limit'."""
    body = rows(20)
    body[4][2] = "7" * 200_000
    path = write_csv(tmp_path / "long.csv", body=body)
    with pytest.raises(ValueError) as info:
        load_csv(path)
    assert one_line(info) == (
        f"{path}: line 6, column 'b': a cell of 200000 characters; expected at most "
        f"{MAX_CELL_CHARS} (the reader's limit, MAX_CELL_CHARS)"
    )
    body[4][2] = '"' + "7" * 5000  # quoted, the same
    path = write_csv(tmp_path / "quoted.csv", body=body)
    with pytest.raises(ValueError, match=r"quoted\.csv: line 6, column 'b': a cell of 500"):
        load_csv(path)


def test_a_long_line_or_too_many_columns_stop_the_reading(tmp_path, monkeypatch):
    header = ["date", *(f"v{i}" for i in range(100_001))]  # one variate past the limit
    path = tmp_path / "wide.csv"
    path.write_text(",".join(header) + "\n2021-01-01 00:00:00" + ",1" * 100_001 + "\n")
    with pytest.raises(ValueError) as info:
        load_csv(path)
    assert one_line(info) == (
        f"{path}: line 1: more than 100001 cells (the reader's limit, MAX_COLUMNS); expected a "
        "date and at most 100000 variates"
    )
    # a line that never ends: refused once it passes the limit, the rest never read
    monkeypatch.setattr(reader_module, "MAX_LINE_BYTES", 100_000)
    served = []

    class Endless(io.RawIOBase):
        def readinto(self, b):
            served.append(len(b))
            b[:] = b"1" * len(b)
            return len(b)

    with pytest.raises(ValueError) as info:
        reader_module._parse(
            reader_module._byte_lines(Endless().read, label="endless"), False, "endless"
        )
    assert one_line(info) == (
        "endless: line 1: longer than 100000 bytes (the reader's limit, MAX_LINE_BYTES); "
        "expected a CSV file of one row per line"
    )
    assert sum(served) <= 100_000 + 2 * reader_module._CHUNK


@pytest.mark.parametrize(
    ("cell", "pattern"),
    [
        ('"1.5', r"line 4, column 'a': a quoted cell runs past the end of the line"),
        ("1\x005", r"line 4, column 'a': a NUL character; expected a text file"),
    ],
    ids=["open-quote", "nul"],
)
def test_open_quotes_and_nul_characters(tmp_path, cell, pattern):
    body = rows(10)
    body[2][1] = cell
    path = tmp_path / "odd.csv"
    path.write_text("date,a,b\n" + "\n".join(",".join(r) for r in body) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {pattern}"):
        load_csv(path)


def test_a_row_of_the_wrong_length_names_the_column(tmp_path):
    body = rows(10)
    body[3] = body[3][:2]
    path = write_csv(tmp_path / "short.csv", body=body)
    with pytest.raises(
        ValueError, match=r"short\.csv: line 5: 2 cell\(s\), expected 3 \(column 'b' is missing;"
    ):
        load_csv(path)


def test_the_byte_reader_splits_lines_as_csv_does(tmp_path, monkeypatch):
    """\\n, \\r\\n and \\r endings, a \\r\\n split across two chunks, quoted commas, blank
    lines and a byte-order mark: the same table as csv reading the decoded text."""
    monkeypatch.setattr(reader_module, "_CHUNK", 7)  # every boundary case, many times
    body = rows(40)
    text = io.StringIO()  # the header's "b,c" is quoted: a comma inside a cell
    csv.writer(text, lineterminator="\n").writerows([["date", "a", "b,c"], *body])
    lines = text.getvalue().split("\n")
    mixed = "".join(line + ("\r\n", "\r", "\n")[i % 3] for i, line in enumerate(lines[:-1]))
    mixed = mixed.replace("\n2021-01-01 03", "\n\n2021-01-01 03")  # a blank line
    path = tmp_path / "mixed.csv"
    path.write_bytes(b"\xef\xbb\xbf" + mixed.encode("utf-8"))
    got = read_table(path, ett=False)
    want = parse_table(io.StringIO(mixed, newline=""), ett=False, label="x")
    assert got.columns == ("a", "b,c") == want.columns
    assert np.array_equal(got.values, want.values) and np.array_equal(got.dates, want.dates)
    assert np.array_equal(got.lines, want.lines)
    assert got.lines[:6].tolist() == [2, 3, 4, 6, 7, 8]  # line 5 is the blank one


# ---------------------------------------------------------------- values finite in float32
@pytest.mark.parametrize(
    ("row", "column", "cell", "what"),
    [
        # issue 20: finite cells that overflow float32 passed and looked like a diverged run
        (180, "a", "1e40", r"1e\+40 is beyond float32's range \(\|x\| <= 3\.403e\+38\);"),
        (3, "b", "1e300", r"1e\+300 is beyond float32's range \(\|x\| <= 3\.403e\+38\);"),
        (
            190,
            "b",
            "3e38",
            r"3e\+38 is beyond float32's range \(\|x\| <= 3\.403e\+38\) after scaling by the "
            r"train rows' mean [\d.]+ and std [\d.]+;",
        ),
    ],
    ids=["1e40", "1e300", "scaled"],
)
def test_values_beyond_float32_name_the_file_line_and_column(tmp_path, row, column, cell, what):
    body = rows(200)
    for i, r in enumerate(body):
        r[2] = "0.001" if i % 2 else "0"  # b: std 0.0005, so 3e38 overflows once scaled
    body[row][HEADER.index(column)] = cell
    path = write_csv(tmp_path / "big.csv", body=body)
    with pytest.raises(ValueError) as info:
        load_csv(path, lookback=8, horizon=4)
    message = one_line(info)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: line {row + 2}, column '{column}': {what} expected values "
        r"the forecaster can hold in float32 \(a misplaced exponent\? fix the cell or rescale "
        r"the column\)",
        message,
    ), message


def test_values_without_lines_are_named_by_row():
    dates = np.datetime64("2021-01-01T00:00:00", "s") + np.arange(100) * np.timedelta64(1, "h")
    raw = np.ones((100, 2))
    raw[::2] = 0.0
    raw[95, 1] = -1e39
    with pytest.raises(ValueError, match=r"^made: row 95, column 'y': -1e\+39 is beyond float32"):
        build_dataset(
            dates, raw, columns=("x", "y"), borders=custom_borders(100, 4), lookback=4,
            horizon=2, freq="h", protocol="custom", source="made",
        )  # fmt: skip


def test_a_split_holding_nan_is_refused():
    """issue 20: NaN values in a split were accepted."""
    values = torch.zeros(20, 3)
    values[7, 2] = float("nan")
    dates = np.datetime64("2021-01-01", "s") + np.arange(20) * np.timedelta64(1, "h")
    ok = dict(name="train", marks=torch.zeros(20, 4), dates=dates, start=10, lookback=4,
              horizon=2)  # fmt: skip
    with pytest.raises(ValueError) as info:
        ForecastSplit(values=values, **ok)
    assert one_line(info) == (
        "ForecastSplit 'train': values: expected finite values, got nan at row 7 (source row "
        "17), column 2 (1 NaN/inf value(s) in all)"
    )
    marks = torch.zeros(20, 4)
    marks[0, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^ForecastSplit 'train': marks: .*got inf at row 0"):
        ForecastSplit(values=torch.zeros(20, 3), **{**ok, "marks": marks})


# ---------------------------------------------------------------- sizes
def _brute_force_min_rows(n: int, lookback: int, horizon: int) -> int:
    """The search split_borders did: one row at a time."""
    need = n + 1
    while not splits_module._borders_ok(custom_borders(need, lookback), lookback, horizon):
        need += 1
    return need


def test_the_minimum_rows_are_computed_as_the_search_found_them():
    """Exhaustive over small sizes, where Python's int(0.7 * n) falls short at some multiples
    of 10 (n = 90: 62.99...), plus a sample of larger ones."""
    for lookback in range(1, 31):
        for horizon in range(1, 31):
            for n in (0, 1, 9, 10, 89, 90, 91, 170, 179, 180, 333, 997):
                want = _brute_force_min_rows(n, lookback, horizon)
                assert splits_module.custom_min_rows(n, lookback, horizon) == want
    rng = np.random.default_rng(0)
    for lookback, horizon, n in rng.integers(1, 3000, size=(40, 3)).tolist():
        want = _brute_force_min_rows(n, lookback, horizon)
        assert splits_module.custom_min_rows(n, lookback, horizon) == want


def test_a_huge_lookback_is_refused_without_a_search(monkeypatch):
    """issue 20: --seq_len 1000000000 hung (~2.6 s per million of lookback)."""
    calls = []
    real = splits_module.custom_borders

    def counted(n, lookback):
        calls.append(n)
        if len(calls) > 1000:
            raise AssertionError("searched the rows one at a time")
        return real(n, lookback)

    monkeypatch.setattr(splits_module, "custom_borders", counted)
    with pytest.raises(ValueError) as info:
        split_borders(1000, "custom", 10**9, 96, "data.csv")
    assert "expected at least 1428571566 data rows" in one_line(info)
    with pytest.raises(ValueError, match=r"expected at least 9999999984 data rows"):
        split_borders(1000, "custom", 96, 10**9, "data.csv")


@pytest.fixture
def no_generator(monkeypatch):
    """The synthetic generator's first step fails the test: sizes must be refused before it."""

    def boom(*args, **kwargs):
        raise AssertionError("the generator started")

    monkeypatch.setattr(np.random, "default_rng", boom)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        # issue 20: a synthetic source of 10**11 steps allocated 745 GiB
        (
            {"n_steps": 10**11},
            r"^n_steps: expected an integer <= 1000000 \(the synthetic generator's limit\), "
            r"got int 100000000000$",
        ),
        ({"n_variates": 10**5}, r"^n_variates: expected an integer <= 10000 "),
        (
            {"n_steps": 1_000_000, "n_variates": 11},
            r"^n_steps, n_variates: expected at most 10000000 values \(the synthetic "
            r"generator's limit\), got n_steps \* n_variates = 1000000 \* 11 = 11000000$",
        ),
    ],
)
def test_the_synthetic_sizes_are_bounded_before_allocation(no_generator, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        synthetic_dataset(**kwargs)
    T, N = kwargs.get("n_steps", 6000), kwargs.get("n_variates", 7)
    with pytest.raises(ValueError, match=pattern):
        synthetic_values(T, N, 0)  # the generator itself checks too


class _Endless:
    """A urlopen response that never ends (AssertionError once it has served 80 MiB)."""

    def __init__(self, headers: dict[str, str] | None = None):
        self.headers = headers or {}
        self.served = 0

    def read(self, size: int = -1) -> bytes:
        if self.served > 80 << 20:
            raise AssertionError("read past the cap")
        n = 1 << 20 if size is None or size < 0 else size
        self.served += n
        return b"1" * n

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def test_a_download_that_never_ends_stops_at_the_cap(tmp_path, monkeypatch):
    """issue 20: download_ett from a source that never ends read until memory ran out."""
    response = _Endless()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: response)
    with pytest.raises(ValueError) as info:
        download_ett("ETTh1", cache_dir=tmp_path, base_url="https://example.test")
    assert one_line(info) == (
        "download of https://example.test/ETTh1.csv: more than 67108864 bytes (the cap, "
        "MAX_DOWNLOAD_BYTES; an ETT file is 2.5 to 10 MB); not an ETT file, nothing was cached"
    )
    assert response.served == download_module.MAX_DOWNLOAD_BYTES + 1
    assert list((tmp_path / "ETT-small").iterdir()) == []
    # a size declared beyond the cap: refused before a byte is read
    response = _Endless({"Content-Length": str(100 << 20)})
    with pytest.raises(ValueError, match=r"more than 67108864 bytes \(the cap"):
        download_ett("ETTh2", cache_dir=tmp_path, base_url="https://example.test")
    assert response.served == 0


def test_a_download_that_is_not_utf8_names_the_line(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    header = b"date,HUFL,HULL,MUFL,MULL,LUFL,LULL,OT\n"
    (remote / "ETTh1.csv").write_bytes(header + b"2016-07-01 00:00:00,\xff,1,2,3,4,5,6\n")
    with pytest.raises(
        ValueError,
        match=r"^downloaded file://.*ETTh1\.csv is not a valid ETT CSV \(nothing was cached\): "
        r"the file: line 2, column 'HUFL': bytes that are not UTF-8",
    ):
        download_ett("ETTh1", cache_dir=tmp_path / "cache", base_url=remote.as_uri())


# ---------------------------------------------------------------- a spec names data, not files
@pytest.fixture
def trained_on(tmp_path):
    """A custom CSV and its data spec."""
    path = write_csv(tmp_path / "data.csv", n=400)
    return path, load_csv(path, lookback=8, horizon=4).spec()


def test_a_specs_own_path_is_never_opened(trained_on, monkeypatch):
    """issue 20: evaluate read any file a checkpoint's spec named (and printed its first line)."""
    path, spec = trained_on
    opened = []
    monkeypatch.setattr(splits_module, "read_table", lambda *a, **k: opened.append(a))
    with pytest.raises(FileNotFoundError) as info:
        reload_data(spec)
    assert one_line(info) == (
        f"data spec: the data came from {str(path)!r}, which is reloaded only from a path you "
        "pass (reload_data(spec, path=...); the command's --data): a data spec never names a "
        "file to open"
    )
    assert opened == []


@pytest.mark.parametrize("ett", ["../../etc/passwd", "ETTh1/../x", "/tmp/ETTh1.csv", 5])
def test_an_ett_name_is_a_name_and_nothing_else(trained_on, ett):
    _, spec = trained_on
    with pytest.raises(ValueError, match=r"^data spec: ett: expected None or one of ETTh1, "):
        reload_data(dict(spec, ett=ett, protocol="etth"))


@pytest.mark.parametrize(
    ("field", "value", "error", "pattern"),
    [
        ("protocol", "auto", ValueError, r"^data spec: protocol: expected one of 'etth', "),
        ("freq", "d", ValueError, r"^data spec: freq: expected one of 'h', 't', got str 'd'$"),
        ("lookback", -1, ValueError, r"^lookback: expected a positive integer, got int -1$"),
        ("horizon", "4", TypeError, r"^horizon: expected a positive integer, got str '4'$"),
    ],
)
def test_a_specs_fields_are_checked_before_use(trained_on, field, value, error, pattern):
    path, spec = trained_on
    with pytest.raises(error, match=pattern):
        reload_data(dict(spec, **{field: value}), path=path)


def test_the_users_path_reloads_and_edited_rows_are_refused(trained_on, tmp_path):
    """issue 20: rows edited after training were reloaded without a word."""
    path, spec = trained_on
    back = reload_data(spec, path=path)
    assert back.spec() == spec and len(spec["digest"]) == 64
    body = rows(400)
    body[390][1] = "5.0001"  # a test row: the train rows' statistics do not move
    edited = write_csv(tmp_path / "edited.csv", body=body)
    assert load_csv(edited, lookback=8, horizon=4).spec()["scaler_mean"] == spec["scaler_mean"]
    with pytest.raises(ValueError) as info:
        reload_data(spec, path=edited)
    message = one_line(info)
    assert message.startswith(
        f"data: expected the data the model was trained on, got data whose values differ "
        f"(digest '{spec['digest']}' when trained, '"
    ), message
    assert message.endswith(
        f"rows edited since?) (trained on {str(path)!r}, given {str(edited)!r})"
    )
    # a spec written before the digest existed is checked on its other fields, as before
    old = {k: v for k, v in spec.items() if k != "digest"}
    check_data_spec(old, load_csv(edited, lookback=8, horizon=4))


def test_the_synthetic_spec_reloads_within_the_generators_limits(no_generator):
    spec = {
        "source": "synthetic(n_steps=100000000000, n_variates=7, seed=0)",
        "ett": None, "protocol": "custom", "freq": "h", "lookback": 96, "horizon": 96,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"^n_steps: expected an integer <= 1000000"):
        reload_data(spec)
    digits = dict(spec, source="synthetic(n_steps=" + "9" * 5000 + ", n_variates=7, seed=0)")
    with pytest.raises(FileNotFoundError, match=r"the data came from 'synthetic\(n_steps=9999"):
        reload_data(digits)  # not a call the generator writes: a bounded message, no int()


def test_the_synthetic_and_ett_specs_reload(monkeypatch, etth1_path: Path):
    data = synthetic_dataset(n_steps=900, n_variates=2, lookback=8, horizon=4, seed=3)
    assert data.spec()["digest"] is None  # a pure function of its source
    assert reload_data(data.spec()).spec() == data.spec()
    monkeypatch.setenv("DIFFSAMPLE_ETT_DIR", str(etth1_path.parent))
    ett = load_csv(etth1_path, lookback=24, horizon=12)
    spec = dict(ett.spec(), source="/nowhere/ETTh1.csv")  # trained on another machine
    back = reload_data(spec)
    assert back.spec() == ett.spec() and torch.equal(back.test.values, ett.test.values)
