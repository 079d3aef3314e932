"""The layering holds: import contracts (import-linter) and the device-call rule.

``lint-imports`` checks the contracts in ``pyproject.toml`` (models know no objective or
sampler, objectives no sampler, analysis no sandbox or jax, nothing imports an entry
point...). Calls cannot be seen by an import contract, so an AST scan checks the other
rule: only ``sandbox/core/mesh.py`` asks JAX about devices and processes."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEVICE_CALLS = {"devices", "local_devices", "device_count", "local_device_count", "default_backend",
                "process_index", "process_count"}
MESH = REPO / "sandbox" / "core" / "mesh.py"


def device_calls(path: Path) -> list[str]:
    """``file:line jax.<call>`` for every device / process API use in one file: attribute calls on
    ``jax``, ``jax.distributed`` and any use of ``jax.experimental.multihost_utils``, and
    ``jax.config.update("jax_num_cpu_devices", ...)``."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "jax":
            if node.attr in DEVICE_CALLS or node.attr == "distributed":
                out.append(f"{where} jax.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module and "multihost_utils" in (
                node.module + " " + " ".join(a.name for a in node.names)):
            out.append(f"{where} multihost_utils")
        if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "jax_num_cpu_devices"):
            out.append(f"{where} jax_num_cpu_devices")
    return out


def test_only_the_mesh_module_calls_device_and_process_apis():
    found = [c for p in sorted((REPO / "sandbox").rglob("*.py")) if p != MESH for c in device_calls(p)]
    assert not found, "device/process calls outside sandbox/core/mesh.py: " + "; ".join(found)


def test_the_scan_sees_a_device_call(tmp_path):
    """The rule can fail: a module that asks the backend is caught, with its line."""
    bad = REPO / "sandbox" / "_layering_probe.py"
    try:
        bad.write_text("import jax\n\nKIND = jax.default_backend()\n")
        assert device_calls(bad) == ["sandbox/_layering_probe.py:3 jax.default_backend"]
    finally:
        bad.unlink(missing_ok=True)


def _lint_imports() -> str:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return exe


def test_import_contracts_hold():
    r = subprocess.run([_lint_imports()], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_a_broken_contract_fails_and_names_the_import(tmp_path):
    """A backbone that imports an objective breaks the first contract; the report names the
    offending import with its line."""
    probe = REPO / "sandbox" / "models" / "_layering_probe.py"
    try:
        probe.write_text("from sandbox.objectives import AR  # noqa: F401\n")
        r = subprocess.run([_lint_imports()], cwd=REPO, capture_output=True, text=True)
    finally:
        probe.unlink(missing_ok=True)
    assert r.returncode != 0
    assert "sandbox.models._layering_probe -> sandbox.objectives" in r.stdout
