"""Import rules (STYLE.md): the protocol and the domain model import no async framework, so the
gevent-based load tests can use them; the ``queuechat`` command imports Trio only in the subcommand
that runs it; the server shell does import Trio. Each check runs in a fresh interpreter.

Also: every public surface (``__all__``) lists only names that exist, each once; no package imports
another's private modules; and no modules import each other, even round about or inside functions.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

FRAMEWORKS = ("trio", "trio_websocket", "wsproto", "gevent")


def modules_after_import(module: str) -> set[str]:
    """Every name in ``sys.modules``, and every top-level package there, after importing ``module``
    in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "names = set(sys.modules) | {name.partition('.')[0] for name in sys.modules}\n"
        "print(json.dumps(sorted(names)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", [
    "reference_server",
    "reference_server.protocol",
    "reference_server.domain",
    "reference_server.wscodec",  # the WebSocket codec: the sink (asyncio) and the load tests use it
    "queuechat",
    "queuechat.cli",
])
def test_module_imports_no_async_framework(module: str) -> None:
    """Importing it in a fresh interpreter leaves no trio, trio_websocket, wsproto or gevent loaded."""
    loaded = modules_after_import(module)
    assert module.partition(".")[0] in loaded  # the import did happen
    assert loaded.isdisjoint(FRAMEWORKS), sorted(loaded & set(FRAMEWORKS))


def test_server_shell_imports_trio() -> None:
    """Positive control: the check above can see Trio when it is imported."""
    loaded = modules_after_import("reference_server.server")
    assert {"trio", "trio_websocket", "wsproto"} <= loaded
    assert "gevent" not in loaded


def test_load_tests_import_neither_trio_nor_the_server_shell() -> None:
    """The locustfile (gevent, monkey-patched) imports the protocol, never Trio or the server shell."""
    loaded = modules_after_import("loadtests.locustfile")
    assert "locust" in loaded and "gevent" in loaded  # positive control: it is the gevent world
    assert loaded.isdisjoint({"trio", "trio_websocket"}), sorted(loaded & {"trio", "trio_websocket"})
    assert loaded.isdisjoint({"reference_server.server", "reference_server._shell"})


OUR_PACKAGES = ("reference_server", "simulator", "loadtests", "reports", "conformance", "queuechat", "tests",
                "benchmarks")


@pytest.mark.parametrize("module", ["formats.history", "formats.hlog", "formats.timeline", "formats.summary",
                                    "formats.junit"])
def test_file_formats_import_no_framework_no_matplotlib_and_none_of_our_packages(module: str) -> None:
    """STYLE.md: a file format is read and written by several packages, so it imports none of them (the
    reports can read what the simulator and the load tests wrote without importing either)."""
    loaded = modules_after_import(module)
    assert module in loaded  # the import did happen
    forbidden = {*FRAMEWORKS, "locust", "matplotlib", *OUR_PACKAGES}
    assert loaded.isdisjoint(forbidden), sorted(loaded & forbidden)


def test_reports_read_files_and_import_none_of_the_packages_that_write_them() -> None:
    """STYLE.md: reports may use the file formats (to read what the others wrote) and matplotlib,
    nothing else of theirs."""
    code = (
        "import json, sys\n"
        "import reports, reports._sim_report, reports._compare, reports._load_report\n"
        "from reports import _mpl; _mpl.new_figure()\n"
        "print(json.dumps(sorted(set(sys.modules) | {n.partition('.')[0] for n in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert {"reports", "matplotlib", "formats"} <= loaded  # positive control: it did import and draw
    forbidden = {*FRAMEWORKS, "locust", "simulator", "loadtests", "reference_server", "conformance",
                 "queuechat"}
    assert loaded.isdisjoint(forbidden), sorted(loaded & forbidden)


@pytest.mark.parametrize("module", [
    "reference_server",
    "reference_server.protocol",
    "reference_server.domain",
    "reference_server.server",
    "reports",
    "simulator",
    "loadtests",
    "conformance",
    "queuechat.children",
])
def test_public_surface_lists_only_names_that_exist(module: str) -> None:
    """Every name in ``__all__`` is defined in the module, and none is listed twice."""
    imported = importlib.import_module(module)
    names = list(imported.__all__)
    assert names, f"{module} exports nothing"
    missing = [name for name in names if not hasattr(imported, name)]
    assert missing == []
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert duplicates == []
    assert all(isinstance(name, str) and not name.startswith("_") for name in names)


def test_the_wheel_ships_every_package_and_the_files_they_read(tmp_path: Path) -> None:
    """A non-editable install works too: the scenarios (the demo's included), the SLO file and every
    package are in the wheel."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           str(root), "-w", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("queuechat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"simulator/scenarios/{p.name}" for p in (root / "simulator" / "scenarios").glob("*.toml")}
    assert "simulator/scenarios/demo.toml" in shipped and shipped <= names
    assert "loadtests/slo.toml" in names and "loadtests/locustfile.py" in names
    for package in ("reference_server", "queuechat", "loadtests", "conformance", "simulator", "reports",
                    "formats"):
        assert f"{package}/__init__.py" in names, package


def test_the_load_tests_face_imports_neither_locust_nor_gevent_nor_trio() -> None:
    """``import loadtests`` (what ``queuechat load`` uses around a run) keeps its promise: the parts that
    need Locust are loaded by the Locust file only."""
    loaded = modules_after_import("loadtests")
    assert "loadtests._report" in loaded  # positive control: the face did import its modules
    forbidden = {"locust", "gevent", "trio", "trio_websocket"}
    assert loaded.isdisjoint(forbidden), sorted(loaded & forbidden)


# --------------------------------------------------------------------------- who imports what

ROOT = Path(__file__).resolve().parent.parent
# Every top-level package of the project (a folder with an __init__.py), tests left out.
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")
# Imports allowed to close a circle, each with its reason: the registry imports the case modules, which
# register themselves with it, when every case is asked for.
CIRCLE_EXCEPTIONS = {("conformance._registry", "conformance.cases")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"))


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (not under TYPE_CHECKING): absolute
    names, relative imports resolved; ``from package import name`` counts as the module ``package.name``
    when there is one."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names} & known
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined by the module itself
                found.add(source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def test_the_project_has_the_packages_the_import_checks_walk() -> None:
    """Positive control for the two checks below: they see every package (and benchmarks/)."""
    expected = {"reference_server", "simulator", "loadtests", "reports", "conformance", "queuechat"}
    assert expected <= set(PACKAGES)
    modules = project_modules()
    assert "loadtests._users" in modules and "conformance.cases" in modules
    protocol = imported_modules(modules["reference_server.protocol"], set(modules))
    assert {"reference_server._codec", "reference_server._frames"} <= protocol
    registry = imported_modules(modules["conformance._registry"], set(modules))
    assert "conformance.cases" in registry  # imported inside a function


def test_no_package_reaches_into_another_packages_private_modules() -> None:
    """queuechat/, benchmarks/ and every package import other packages through their public faces
    (``__init__`` exports, or public modules such as ``reference_server.protocol``), never a ``_module``
    of theirs. Tests may test a private module directly; they are not walked."""
    modules = project_modules()
    files = [*modules.values(), *sorted((ROOT / "benchmarks").glob("*.py"))]
    reaching = []
    for path in files:
        own = path.relative_to(ROOT).parts[0]
        for imported in sorted(imported_modules(path, set(modules))):
            top, *rest = imported.split(".")
            if top in PACKAGES and top != own and any(part.startswith("_") for part in rest):
                reaching.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert reaching == []


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.append(member)
                if member == node:
                    break
            if len(part) > 1 or node in graph[node]:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_circles_among_the_projects_modules() -> None:
    """No two modules import each other, directly or round about, counting imports inside functions
    too: a circle is broken by moving the shared piece down, not by a late import. Imports under
    TYPE_CHECKING don't count (they never run); the one exception is the case registration."""
    modules = project_modules()
    graph = {
        name: {target for target in imported_modules(path, set(modules))
               if target in modules and target != name and (name, target) not in CIRCLE_EXCEPTIONS}
        for name, path in modules.items()
    }
    assert _circles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    """Positive control: a round-about circle and a plain one are found; a chain is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert _circles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
