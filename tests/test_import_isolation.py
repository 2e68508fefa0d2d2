"""Import rules (STYLE.md): the protocol and the domain model import no async framework, so the
gevent-based load tests can use them; the ``queuechat`` command imports Trio only in the subcommand
that runs it; the server shell does import Trio. Each check runs in a fresh interpreter.

Also: every public surface (``__all__``) lists only names that exist, each once.
"""

from __future__ import annotations

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


def test_reports_read_files_and_import_none_of_the_packages_that_write_them() -> None:
    """STYLE.md: reports may use files written by the others and matplotlib, nothing of theirs."""
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
    assert {"reports", "matplotlib"} <= loaded  # positive control: it did import and draw
    forbidden = {*FRAMEWORKS, "locust", "simulator", "loadtests", "reference_server", "conformance",
                 "queuechat"}
    assert loaded.isdisjoint(forbidden), sorted(loaded & forbidden)


@pytest.mark.parametrize("module", [
    "reference_server",
    "reference_server.protocol",
    "reference_server.domain",
    "reference_server.server",
    "reports",
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
