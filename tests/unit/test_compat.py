"""The project's reaches into its dependencies' private parts all go through ``infra.compat``, and
each still holds on the installed versions: a pinned version that moves, or a symbol that
disappears, fails here by name, not deep inside a conversion."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import platform
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from packaging.version import Version

from infra import compat

ROOT = Path(__file__).resolve().parents[2]
THIRD_PARTY = ("coremltools", "torch", "nemo")
PRIVATE_NAMES = {path.split(".")[-1] for _, path in compat.REACHES if path.split(".")[-1].startswith("_")} | {
    attribute for _, _, attribute in compat.INSTANCE_REACHES}


@pytest.mark.parametrize("package", list(compat.CHECKED_ON))
def test_the_installed_versions_are_those_the_reaches_were_read_against(package):
    assert Version(version(package)).public == compat.CHECKED_ON[package], (
        f"{package} {version(package)} is installed; infra/compat.py was checked on "
        f"{compat.CHECKED_ON[package]}: read each reach again, then update CHECKED_ON")


@pytest.mark.parametrize(("module", "path"), compat.REACHES, ids=[f"{m}:{p}" for m, p in compat.REACHES])
def test_every_reached_symbol_is_still_there(module, path):
    if module == "coremltools.libcoremlpython" and platform.system() != "Darwin":
        pytest.skip("coremltools' Core ML bindings exist only on macOS")
    if path.startswith("ops.mkldnn") and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN: onednn_linear_pointwise gives None, Torch's linear is used")
    functools.reduce(getattr, path.split("."), importlib.import_module(module))


@pytest.mark.parametrize(("module", "owner", "attribute"), compat.INSTANCE_REACHES,
                         ids=[f"{m}:{o}.{a}" for m, o, a in compat.INSTANCE_REACHES])
def test_every_reached_instance_attribute_is_still_set_by_its_constructor(module, owner, attribute):
    assert f"self.{attribute} =" in inspect.getsource(getattr(importlib.import_module(module), owner).__init__)


def _reaches_outside_compat() -> list[str]:
    found = []
    for package in ("cli", "exporters", "infra", "reports", "runtimes", "training", "validation"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "infra" / "compat.py":
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in THIRD_PARTY:
                    private = [part for part in node.module.split(".") if part.startswith("_")]
                    private += [alias.name for alias in node.names if alias.name.startswith("_")]
                    if private:
                        found.append(f"{where}: from {node.module} import ... ({', '.join(private)})")
                elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
                    found.append(f"{where}: .{node.attr}")
    return found


def test_no_module_but_compat_reaches_into_a_dependencys_private_parts():
    assert _reaches_outside_compat() == []
