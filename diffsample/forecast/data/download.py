"""Locating ETT files on this machine, and the opt-in download into a cache.

Dimensions: none (files and paths only); the CSVs hold n rows of the N = 7 ETT variates.

Nothing here touches the network unless ``download_ett`` is called (``load_dataset`` calls it
only with ``download=True``). A download is held in memory (an ETT file is 2.5 to 10 MB; at
most :data:`MAX_DOWNLOAD_BYTES` are read, so a source that never ends cannot exhaust memory),
checked as an ETT CSV, and only then written with ``_utils.atomic_write``: a broken-off or bad
download leaves nothing in the cache, and the file gets the permissions a plain ``open`` gives.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from ..._utils import atomic_write, check_number, check_path, expected
from .reader import PathLike, parse_bytes
from .registry import ETT_NAMES, ett_name  # both still exported from here
from .splits import detect_protocol, split_borders

__all__ = [
    "ETT_BASE_URL",
    "ETT_NAMES",
    "MAX_DOWNLOAD_BYTES",
    "cache_root",
    "download_ett",
    "ett_name",
    "find_ett",
    "locate_ett",
]

# the most bytes a download reads: six times the largest ETT file (ETTm2, about 10 MB)
MAX_DOWNLOAD_BYTES = 64 << 20
ETT_BASE_URL = "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/"


def cache_root(cache_dir: PathLike | None) -> Path:
    """``cache_dir``, else ``$DIFFSAMPLE_CACHE``, else ``~/.cache/diffsample``."""
    if cache_dir is not None:
        return check_path("cache_dir", cache_dir)
    env = os.environ.get("DIFFSAMPLE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "diffsample"


def find_ett(stem: str) -> Path | None:
    """``<stem>.csv`` in ``$DIFFSAMPLE_ETT_DIR``, else in the download cache; None if neither."""
    dirs = []
    if os.environ.get("DIFFSAMPLE_ETT_DIR"):
        dirs.append(Path(os.environ["DIFFSAMPLE_ETT_DIR"]))
    dirs.append(cache_root(None) / "ETT-small")
    for d in dirs:
        if (d / f"{stem}.csv").is_file():
            return d / f"{stem}.csv"
    return None


def locate_ett(stem: str, *, download: bool) -> Path:
    """``<stem>.csv`` of an ETT name (checked against :data:`ETT_NAMES`) from
    ``$DIFFSAMPLE_ETT_DIR`` or the download cache, else fetched with ``download_ett`` if
    ``download``; FileNotFoundError saying where it looked and how to get it otherwise."""
    stem = ett_name(stem)
    found = find_ett(stem) or (download_ett(stem) if download else None)
    if found is None:
        env = os.environ.get("DIFFSAMPLE_ETT_DIR")
        where = [f"$DIFFSAMPLE_ETT_DIR={env}"] if env else []
        where.append(str(cache_root(None) / "ETT-small"))
        raise FileNotFoundError(
            f"{stem}.csv not found (looked in {', '.join(where)}); pass download=True, call "
            f"download_ett({stem!r}), set DIFFSAMPLE_ETT_DIR, or pass the file's path"
        )
    return found


def download_ett(
    name: str = "ETTh1",
    *,
    cache_dir: PathLike | None = None,
    base_url: str = ETT_BASE_URL,
    timeout: float = 60.0,
) -> Path:
    """Fetch a public ETT CSV into the cache once; later calls return the cached file.

    At most :data:`MAX_DOWNLOAD_BYTES` (64 MiB, six times the largest ETT file) are read. The
    download is checked (exact ETT header, parsable dates and numbers, enough rows for the
    protocol) before anything is written, then written to a temporary file beside the target
    and moved into place with ``os.replace``: an interrupted or bad download leaves nothing
    behind. The cached file gets the permissions ``open(path, "w")`` would give (0o666 less the
    umask).

    Args:
        name: ``"ETTh1"``, ``"ETTh2"``, ``"ETTm1"`` or ``"ETTm2"`` (``.csv`` optional).
        cache_dir: where to keep it; default ``$DIFFSAMPLE_CACHE``, else ``~/.cache/diffsample``.
            The file lands in ``<cache_dir>/ETT-small/<name>.csv``.
        base_url: folder URL the file name is appended to (``file://`` URLs work too).
        timeout: seconds for the connection (> 0).

    Returns:
        Path of the cached CSV.

    Raises:
        ConnectionError: the URL could not be fetched, or the transfer broke off (the message
            names the URL).
        ValueError: an unknown name, a timeout <= 0, a source larger than the cap, or the
            fetched file is not a valid ETT CSV.
        TypeError: ``name`` or ``base_url`` not a string, ``cache_dir`` not a path, ``timeout``
            not a number.
    """
    stem = ett_name(name)
    folder = cache_root(cache_dir) / "ETT-small"
    if not isinstance(base_url, str):
        raise TypeError(expected("base_url", "a URL string", base_url))
    timeout = check_number("timeout", timeout, minimum=0.0, open_min=True)
    target = folder / f"{stem}.csv"
    if target.is_file():
        return target
    url = (base_url if base_url.endswith("/") else base_url + "/") + f"{stem}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    data = _fetch(url, timeout)
    try:
        table = parse_bytes(data, ett=True, label="the file")  # as read_table will read it
        split_borders(len(table.dates), detect_protocol(target), 1, 1, "the file")
    except ValueError as err:
        raise ValueError(
            f"downloaded {url} is not a valid ETT CSV (nothing was cached): {err}"
        ) from None

    def write(f: IO[bytes]) -> None:
        f.write(data)

    return atomic_write(target, write)


def _fetch(url: str, timeout: float) -> bytes:
    """The whole body of ``url``; ConnectionError naming it if it cannot be read to the end."""
    try:
        resp = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(
            f"could not download {url}: {getattr(err, 'reason', err)}. Check the network "
            f"(or base_url), or download the file yourself and pass its path"
        ) from err
    cap = MAX_DOWNLOAD_BYTES
    too_big = (
        f"download of {url}: more than {cap} bytes (the cap, MAX_DOWNLOAD_BYTES; an ETT file is "
        "2.5 to 10 MB); not an ETT file, nothing was cached"
    )
    chunks, total = [], 0
    with resp:
        headers = getattr(resp, "headers", None)
        declared = str(headers.get("Content-Length", "")) if headers is not None else ""
        if declared.strip().isdigit() and int(declared) > cap:
            raise ValueError(too_big)  # said so before sending anything
        while True:
            try:
                chunk = resp.read(min(1 << 20, cap + 1 - total))
            except (OSError, http.client.HTTPException) as err:  # IncompleteRead is the latter
                raise ConnectionError(f"download of {url} broke off: {err}") from err
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise ValueError(too_big)
    return b"".join(chunks)
