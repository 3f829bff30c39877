"""The data known by name: the four ETT files and the synthetic generator's call.

Dimensions: none (names and source strings only).

A dataset's ``source`` says where it came from: a CSV's absolute path, or the synthetic
generator's call ``"synthetic(n_steps=T, n_variates=N, seed=s)"``. This module says which
sources name data the library can get back by itself (``load_dataset(name)``, a data spec's
``"ett"`` field, ``reload_data``): an ETT file by its stem, the synthetic data by that call.
It imports nothing of the package but ``_utils``, so every other data module may import it
(the batch types, to name a dataset's ETT file in its spec; the loaders and the download, to
resolve a name).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..._utils import check_choice

__all__ = ["ETT_NAMES", "ett_name", "ett_name_of", "synthetic_call", "synthetic_source"]

ETT_NAMES: tuple[str, ...] = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")

# a synthetic dataset's ``source``: the call that makes it again (load_dataset reads it back);
# a source is data a checkpoint holds, so the numbers it may spell are bounded too
_SOURCE = "synthetic(n_steps={n_steps}, n_variates={n_variates}, seed={seed})"
_SOURCE_RE = re.compile(r"synthetic\(n_steps=(\d{1,20}), n_variates=(\d{1,20}), seed=(\d{1,20})\)")


def ett_name(name: object) -> str:
    """The stem of an ETT file name (``"ETTh1"`` or ``"ETTh1.csv"`` -> ``"ETTh1"``)."""
    stem = name.removesuffix(".csv") if isinstance(name, str) else name
    return check_choice("name", stem, ETT_NAMES)


def ett_name_of(source: str, protocol: str) -> str | None:
    """The ETT name (``"ETTh1"``, ...) of a dataset read with an ETT ``protocol`` (``"etth"``
    or ``"ettm"``) from a file so named, else None."""
    stem = Path(source).stem
    return stem if protocol in ("etth", "ettm") and stem in ETT_NAMES else None


def synthetic_source(n_steps: int, n_variates: int, seed: int) -> str:
    """The ``source`` of ``synthetic_dataset(n_steps=..., n_variates=..., seed=...)``."""
    return _SOURCE.format(n_steps=n_steps, n_variates=n_variates, seed=seed)


def synthetic_call(source: str) -> dict[str, int] | None:
    """``{"n_steps", "n_variates", "seed"}`` from a synthetic dataset's ``source``, else None."""
    m = _SOURCE_RE.fullmatch(source)
    if m is None:
        return None
    return dict(zip(("n_steps", "n_variates", "seed"), map(int, m.groups()), strict=True))
