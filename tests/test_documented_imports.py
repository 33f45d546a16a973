"""Every import and every ``tcloud.*`` name the README and the docstrings show works as written."""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("isa", "rtl", "firmware", "runtime", "cluster", "verif")
IMPORT = re.compile(r"\bfrom (tcloud(?:\.\w+)+) import (\w+(?:, *\w+)*)")
NAME = re.compile(r"\btcloud(?:\.\w+)+")


def documentation():
    """``(where, text)`` of the README and of every docstring in the packages."""
    yield "README.md", (ROOT / "README.md").read_text()
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield f"{package}/{path.name}", doc


def documented_names():
    names = {}
    for where, text in documentation():
        for module, imported in IMPORT.findall(text):
            names.update({f"{module}.{name.strip()}": where for name in imported.split(",")})
        names.update({name: where for name in NAME.findall(text)})
    return names


def resolve(dotted):
    """The object ``dotted`` names: its longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(dotted)


NAMES = documented_names()


@pytest.mark.parametrize("dotted", sorted(NAMES))
def test_documented_name_resolves(dotted):
    assert resolve(dotted) is not None, NAMES[dotted]


def test_the_runtime_package_offers_the_hypervisor_without_loading_the_rtl():
    from tcloud.runtime import Hypervisor, VNPUSpec
    from tcloud.runtime.hypervisor import Hypervisor as defined, VNPUSpec as spec

    assert (Hypervisor, VNPUSpec) == (defined, spec)
    probe = "import sys, tcloud.runtime; print(sorted(m for m in ('amaranth', 'tcloud.rtl') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"
