"""The package's structure: no import cycle among diffsample's modules, no private name used
outside the module that defines it, the module tree of docs/architecture.md the same as the
files, and every public name of 0.4.0 still importable from where it was (issue 17).

The first two read the source with ``ast`` (nothing is imported), so they see an import hidden
inside a function as well as one at the top of a module. Where known exceptions remain, they
are listed below, and the lists may only shrink: a new exception fails, and so does a listed
one that no longer occurs (take it off the list)."""

from __future__ import annotations

import ast
import importlib
import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# module name -> source file, for every module of the package
FILES = {_module_name(p): p for p in sorted((REPO / "diffsample").rglob("*.py"))}
PACKAGES = {m for m, p in FILES.items() if p.name == "__init__.py"}


# ----------------------------------------------------------------------------------------------
# Known exceptions: other work of issue 17 removes them; these lists may only shrink
# ----------------------------------------------------------------------------------------------

# Import cycles, each as the set of modules that import one another. None left: the one in
# forecast/data (batches -> spec -> download -> splits -> batches) is broken by data/registry.py.
KNOWN_CYCLES: set[frozenset[str]] = set()

# Private names used outside their module: (the user, "the module it is taken from._name").
KNOWN_PRIVATE_CROSSINGS: set[tuple[str, str]] = set()


# ----------------------------------------------------------------------------------------------
# Reading the source
# ----------------------------------------------------------------------------------------------


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:`` (imports for annotations only)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` at any depth (function bodies included), except the bodies of
    ``if TYPE_CHECKING:`` blocks (their ``else`` runs, so it counts)."""
    for child in ast.iter_child_nodes(node):
        yield child
        if isinstance(child, ast.If) and _is_type_checking(child):
            for sub in child.orelse:
                yield sub
                yield from _nodes(sub)
        else:
            yield from _nodes(child)


def _tree(module: str) -> ast.Module:
    return ast.parse(FILES[module].read_text(), filename=str(FILES[module]))


def _base(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of the module ``from <base> import ...`` takes names from."""
    if not node.level:
        return node.module or ""
    package = module if module in PACKAGES else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[tuple[str, str]]:
    """``(local name, diffsample module)`` for each package module one import statement
    imports: the name it binds the module to, or ``""`` for the module a ``from`` import
    takes other names from."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in FILES:  # ``import a.b`` binds a; ``import a.b as m`` binds a.b
                top = alias.name.partition(".")[0]
                yield (alias.asname, alias.name) if alias.asname else (top, top)
        return
    base = _base(module, node)
    if base not in FILES:
        return
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in FILES:  # ``from package import submodule``
            yield alias.asname or alias.name, sub
        else:
            yield "", base


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imports_of(module: str, tree: ast.Module) -> set[str]:
    """The package modules ``module`` imports anywhere in its source: a function-level import
    runs at the first call, and the cycle it closes is still a cycle. A package's ``__init__``
    counts only where an import names the package itself."""
    found: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(m for _, m in _imported(module, node) if m != module)
    return found


def crossings_of(module: str, tree: ast.Module) -> set[tuple[str, str]]:
    """``(module, "other._name")`` for each private name ``module`` takes from another package
    module: ``from other import _name``, or ``other._name`` on a module it imported (any
    local name bound to it, submodules followed: ``pkg.sub._name``)."""
    nodes = list(_nodes(tree))
    found: set[tuple[str, str]] = set()
    bound: dict[str, str] = {}  # local name -> the package module it is bound to
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and _base(module, node) in FILES:
            base = _base(module, node)
            found.update(
                (module, f"{base}.{a.name}")
                for a in node.names
                if _is_private(a.name) and f"{base}.{a.name}" not in FILES
            )
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((name, m) for name, m in _imported(module, node) if name)
    for node in nodes:
        if not isinstance(node, ast.Attribute):
            continue
        attrs: list[str] = []
        cur: ast.expr = node
        while isinstance(cur, ast.Attribute):  # a.b.c -> attrs [c, b], cur a
            attrs.append(cur.attr)
            cur = cur.value
        if not isinstance(cur, ast.Name) or cur.id not in bound:
            continue
        target = bound[cur.id]
        for attr in reversed(attrs):
            if f"{target}.{attr}" in FILES:  # a submodule: keep walking
                target = f"{target}.{attr}"
                continue
            if _is_private(attr) and target != module:
                found.add((module, f"{target}.{attr}"))
            break
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (see ``imports_of``)."""
    return {m: imports_of(m, _tree(m)) for m in FILES}


def private_crossings() -> set[tuple[str, str]]:
    return set().union(*(crossings_of(m, _tree(m)) for m in FILES))


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The import cycles, as the sets of modules that reach one another (Tarjan's strongly
    connected components of more than one module, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def enter(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in sorted(graph):
        if root in index:
            continue
        enter(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    enter(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = {stack.pop()}
                while node not in component:
                    component.add(stack.pop())
                on_stack.difference_update(component)
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def a_cycle(graph: dict[str, set[str]], component: frozenset[str]) -> str:
    """A shortest cycle through the component's first module, as ``a -> b -> ... -> a``."""
    start = min(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return " -> ".join([*reversed(path), start])
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def test_the_reading_sees_hidden_imports_and_private_names():
    """What the two checks rest on: relative imports resolve, an import inside a function
    counts and one under TYPE_CHECKING does not, a private name is seen whether imported or
    reached as an attribute of an imported module, and a cycle is found and spelled out."""
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "from .. import samplers as s\n"
        "from . import data\n"
        "import diffsample.forecast.model\n"
        "from .training import _residual_stats, train\n"
        "if TYPE_CHECKING:\n"
        "    from .cli import main\n"
        "else:\n"
        "    from .report import write_json\n"
        "def f():\n"
        "    from .evaluation import evaluate_split\n"
        "    return s._grid, data.batches._check_finite_rows, data.load_csv, s.__name__,"
        " diffsample.forecast.model._write_checkpoint\n"
    )
    module = "diffsample.forecast.baselines"
    assert imports_of(module, tree) == {
        "diffsample.samplers",
        "diffsample.forecast.data",
        "diffsample",  # ``import diffsample.forecast.model`` binds (and runs) the package
        "diffsample.forecast.training",
        "diffsample.forecast.report",
        "diffsample.forecast.evaluation",
    }
    assert crossings_of(module, tree) == {
        (module, "diffsample.forecast.training._residual_stats"),
        (module, "diffsample.samplers._grid"),
        (module, "diffsample.forecast.data.batches._check_finite_rows"),
        (module, "diffsample.forecast.model._write_checkpoint"),
    }
    init = "diffsample.forecast.data"  # a package's relative imports start at the package
    assert imports_of(init, ast.parse("from .batches import WindowBatch\n")) == {
        "diffsample.forecast.data.batches"
    }
    cyclic = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"a"}}
    assert strongly_connected(cyclic) == [frozenset("abc")]
    assert a_cycle(cyclic, frozenset("abc")) == "a -> b -> c -> a"
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "diffsample._utils" in graph["diffsample.forecast.data.batches"]
    assert "diffsample.forecast.data" in graph["diffsample.forecast"]


def test_no_import_cycle():
    graph = import_graph()
    found = set(strongly_connected(graph))
    new = sorted(f"{a_cycle(graph, c)}  (all of {sorted(c)})" for c in found - KNOWN_CYCLES)
    gone = sorted(sorted(c) for c in KNOWN_CYCLES - found)
    assert not new, "import cycle(s) among diffsample's modules:\n" + "\n".join(new)
    assert not gone, f"KNOWN_CYCLES lists cycles that are gone; take them off: {gone}"


def test_no_private_name_crosses_a_module():
    found = private_crossings()
    new = sorted(found - KNOWN_PRIVATE_CROSSINGS)
    gone = sorted(KNOWN_PRIVATE_CROSSINGS - found)
    assert not new, "private names used outside their module:\n" + "\n".join(
        f"{user} uses {name}" for user, name in new
    )
    assert not gone, f"KNOWN_PRIVATE_CROSSINGS lists crossings that are gone; take them off: {gone}"


# ----------------------------------------------------------------------------------------------
# The module tree of docs/architecture.md
# ----------------------------------------------------------------------------------------------

ARCHITECTURE = REPO / "docs" / "architecture.md"
# "<two spaces a level><name.py or folder/>  <job>": the job starts after two spaces or more
TREE_LINE = re.compile(r"( *)(\S+\.py|\S+/)(?: {2,}(\S.*))?")


def doc_tree(text: str) -> dict[str, str]:
    """``{path: job}`` for each entry of the first ```text block after ``## Module tree``,
    paths relative to the repository (``"diffsample/walk.py"``, ``"diffsample/metrics/"``).
    A line that is not an entry (a wrapped job, an odd indent, a name without a job) is an
    error, so that the doc cannot drift into a shape this reading skips."""
    _, heading, section = text.partition("\n## Module tree\n")
    block = re.search(r"```text\n(.*?)```", section, re.S)
    if not heading or block is None:
        raise ValueError("expected a '## Module tree' section with a ```text block")
    tree: dict[str, str] = {}
    folders: list[str] = []  # the open folder at each depth
    for n, line in enumerate(block.group(1).splitlines(), 1):
        if not line.strip():
            continue
        entry = TREE_LINE.fullmatch(line)
        if entry is None or not entry.group(3):
            raise ValueError(f"tree line {n}: expected '<name.py or folder/>  <job>', got {line!r}")
        indent, name, job = entry.groups()
        depth = len(indent) // 2
        if len(indent) % 2 or depth > len(folders):
            raise ValueError(
                f"tree line {n}: expected an indent of 2 spaces a level, at most "
                f"{2 * len(folders)}, got {len(indent)}: {line!r}"
            )
        del folders[depth:]
        path = "".join(folders) + name
        if path in tree:
            raise ValueError(f"tree line {n}: {path} is listed twice")
        tree[path] = job
        if name.endswith("/"):
            folders.append(name)
    return tree


def tree_differences(tree: dict[str, str], files: set[str]) -> tuple[list[str], list[str]]:
    """(the files the tree lacks, the tree's entries with no file or folder of files), for
    ``files`` the ``.py`` paths on disk, relative to the repository."""
    folders = {f.rsplit("/", k)[0] + "/" for f in files for k in range(1, f.count("/") + 1)}
    missing = sorted(files - tree.keys())
    extra = sorted(p for p in tree if p not in files and p not in folders)
    return missing, extra


def test_the_tree_reading_sees_every_entry_and_refuses_what_it_cannot_read():
    text = (
        "# A page\n\n## Module tree\n\nprose\n\n```text\n"
        "pkg/            the package\n"
        "  __init__.py   its names\n"
        "  sub/          a folder\n"
        "    a.py        job a\n"
        "  b.py          job b, after the folder closed\n"
        "```\n"
    )
    tree = doc_tree(text)
    assert tree == {
        "pkg/": "the package",
        "pkg/__init__.py": "its names",
        "pkg/sub/": "a folder",
        "pkg/sub/a.py": "job a",
        "pkg/b.py": "job b, after the folder closed",
    }
    files = {"pkg/__init__.py", "pkg/sub/a.py", "pkg/c.py"}
    assert tree_differences(tree, files) == (["pkg/c.py"], ["pkg/b.py"])
    no_sub = (["pkg/c.py"], ["pkg/b.py", "pkg/sub/", "pkg/sub/a.py"])  # a folder without files
    assert tree_differences(tree, files - {"pkg/sub/a.py"}) == no_sub
    for bad, match in (
        ("    a.py        job a\n", "indent"),  # under a file, not a folder
        ("  c.py\n", "expected '<name.py"),  # no job
        ("                wrapped job\n", "expected '<name.py"),
        ("   c.py        odd indent\n", "indent"),
        ("  b.py          again\n", "twice"),
    ):
        with pytest.raises(ValueError, match=match):
            doc_tree(text.replace("```\n", bad + "```\n"))  # one more line at the end
    with pytest.raises(ValueError, match="Module tree"):
        doc_tree(text.replace("## Module tree", "## Modules"))


def test_docs_architecture_lists_every_module_of_the_package_and_only_those():
    tree = doc_tree(ARCHITECTURE.read_text())
    files = {p.relative_to(REPO).as_posix() for p in FILES.values()}
    missing, extra = tree_differences(tree, files)
    assert not missing, (
        "docs/architecture.md's module tree lacks these modules (add a line with each one's "
        f"job): {missing}"
    )
    assert not extra, f"docs/architecture.md's module tree lists what is not on disk: {extra}"


# ----------------------------------------------------------------------------------------------
# The public names of 0.4.0
# ----------------------------------------------------------------------------------------------

# The ``__all__`` of every module at 088c7fa (no tag exists; "version 0.4.0", the commit that
# set the version and wrote the CHANGELOG's "## 0.4.0"; the lists are the same at 6cd9905, the
# CHANGELOG's last 0.4.0 edit), read with ast from ``git show``. diffsample._utils is left out:
# a private module (its progress_disabled was removed in 0.5.0, on purpose).
PUBLIC_0_4_0: dict[str, tuple[str, ...]] = {
    "diffsample": (
        "Denoiser",
        "ForecastMetrics",
        "NoiseSchedule",
        "Prediction",
        "PreparesCond",
        "SAMPLERS",
        "crps",
        "crps_sum",
        "keyed_normal",
        "plan_chunk",
        "quantile_crps",
        "sample_ddim",
        "sample_ddpm",
        "sample_dpmpp_2m",
        "sample_dpmpp_3m",
        "sample_many",
        "to_x0_eps",
        "training_target",
    ),
    "diffsample.batching": (
        "plan_chunk",
        "row_cost",
        "sample_many",
    ),
    "diffsample.distributed": (
        "Ranks",
        "local_device",
        "torchrun_rank_world",
    ),
    "diffsample.forecast": (
        "Evaluation",
        "Forecast",
        "ForecastConfig",
        "ForecastDataset",
        "ForecastSplit",
        "ITransformer",
        "ITransformerDiffusion",
        "NonFiniteLossError",
        "StandardScaler",
        "TokenDenoiser",
        "TrainConfig",
        "TrainResult",
        "UNet1DDenoiser",
        "WindowBatch",
        "check_data_spec",
        "download_ett",
        "evaluate_split",
        "load_dataset",
        "synthetic_dataset",
        "train",
    ),
    "diffsample.forecast.baselines": (
        "bootstrap_samples",
        "gaussian_crps",
        "gaussian_samples",
        "residual_std",
        "residuals",
    ),
    "diffsample.forecast.cli": ("main",),
    "diffsample.forecast.data": (
        "ForecastDataset",
        "ForecastSplit",
        "StandardScaler",
        "WindowBatch",
        "check_data_spec",
        "download_ett",
        "load_csv",
        "load_dataset",
        "synthetic_dataset",
        "time_features",
    ),
    "diffsample.forecast.data.batches": (
        "ForecastDataset",
        "ForecastSplit",
        "IndexLike",
        "WindowBatch",
        "check_window_lengths",
    ),
    "diffsample.forecast.data.download": (
        "ETT_BASE_URL",
        "ETT_NAMES",
        "cache_root",
        "download_ett",
        "ett_name",
        "find_ett",
    ),
    "diffsample.forecast.data.loader": ("load_dataset",),
    "diffsample.forecast.data.reader": (
        "ETT_COLUMNS",
        "PathLike",
        "Table",
        "parse_date",
        "parse_table",
        "read_table",
    ),
    "diffsample.forecast.data.scaler": ("StandardScaler",),
    "diffsample.forecast.data.spec": (
        "SPEC_FIELDS",
        "check_data_spec",
        "data_spec",
    ),
    "diffsample.forecast.data.splits": (
        "Borders",
        "ETT_HOUR_BORDERS",
        "ETT_MINUTE_BORDERS",
        "Protocol",
        "build_dataset",
        "custom_borders",
        "detect_protocol",
        "load_csv",
        "split_borders",
    ),
    "diffsample.forecast.data.synthetic": (
        "synthetic_call",
        "synthetic_dataset",
        "synthetic_values",
    ),
    "diffsample.forecast.data.timefeatures": (
        "Freq",
        "TIME_FEATURE_NAMES",
        "time_features",
    ),
    "diffsample.forecast.denoisers": (
        "TokenDenoiser",
        "UNet1DDenoiser",
        "timestep_embedding",
    ),
    "diffsample.forecast.evaluation": (
        "Evaluation",
        "StepMetrics",
        "check_evaluation_args",
        "evaluate_split",
        "forecast_windows",
    ),
    "diffsample.forecast.itransformer": ("ITransformer",),
    "diffsample.forecast.model": (
        "DenoiserName",
        "Forecast",
        "ForecastConfig",
        "ITransformerDiffusion",
        "ScheduleName",
    ),
    "diffsample.forecast.report": (
        "OutputError",
        "OutputFiles",
        "SampleStore",
        "WindowKeeper",
        "check_output_file",
        "fan_chart",
        "have_matplotlib",
        "json_safe",
        "library_versions",
        "machine_info",
        "prepare_output_dir",
        "results_dict",
        "spread_windows",
        "write_json",
        "write_per_step_csv",
    ),
    "diffsample.forecast.training": (
        "AmpMode",
        "Calibration",
        "NonFiniteLossError",
        "TrainConfig",
        "TrainResult",
        "fit_spread_scale",
        "resolve_amp",
        "train",
    ),
    "diffsample.graph": (
        "ChunkGraph",
        "HostSyncError",
    ),
    "diffsample.memory": (
        "back_off",
        "fit_row_cost",
        "free_bytes",
        "is_oom",
        "peak_bytes",
    ),
    "diffsample.metrics": (
        "ForecastMetrics",
        "coverage",
        "crps",
        "crps_sum",
        "interval_width",
        "quantile_crps",
        "sample_quantiles",
    ),
    "diffsample.metrics.scores": (
        "DEFAULT_QUANTILES",
        "coverage",
        "crps",
        "crps_sum",
        "interval_width",
        "quantile_crps",
        "sample_quantiles",
    ),
    "diffsample.metrics.streaming": ("ForecastMetrics",),
    "diffsample.noise": (
        "NoiseSampler",
        "keyed_normal",
        "row_keys",
    ),
    "diffsample.prediction": (
        "Denoiser",
        "Prediction",
        "PreparesCond",
        "autocast_denoiser",
        "check_prediction",
        "to_x0_eps",
        "training_target",
    ),
    "diffsample.samplers": (
        "SAMPLERS",
        "Sampler",
        "sample_ddim",
        "sample_ddpm",
        "sample_dpmpp_2m",
        "sample_dpmpp_3m",
    ),
    "diffsample.schedules": (
        "NoiseSchedule",
        "Spacing",
    ),
}


@pytest.mark.parametrize("module", sorted(PUBLIC_0_4_0))
def test_every_public_name_of_0_4_0_still_imports_from_where_it_did(module):
    mod = importlib.import_module(module)
    missing = []
    for name in PUBLIC_0_4_0[module]:
        if hasattr(mod, name):
            continue
        try:  # ``from package import submodule`` works without the attribute
            importlib.import_module(f"{module}.{name}")
        except ModuleNotFoundError:
            missing.append(name)
    assert not missing, f"from {module} import ...: no longer there: {missing}"
