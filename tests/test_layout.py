"""The package's shape: imports run one way (from the CLI down to the data), no import inside a function
but for optional dependencies, and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cifar_resnet"

# Each module may import only modules of a lower layer (the README's "How the code is laid out").
LAYERS = [
    {"datasets", "augment", "runtime", "images", "distributed", "models.registry", "serve.batching"},
    {"models.seed", "models.resnet", "models.fast", "loader", "config", "metrics"},
    {"models", "optim"},
    {"checkpoint", "engine"},
    {"plots", "inference", "train", "lr_find"},
    {"evaluate", "interpret", "predict", "notebook", "calibration", "export", "serve.app"},
    {"cli", "__init__", "serve"},
    {"__main__"},
]

# Imports inside functions that are allowed, and why: optional dependencies, imported only when asked for.
FUNCTION_LEVEL_IMPORTS = {("train", "torch.utils.tensorboard"), ("cli", ".serve"), ("export", "onnx"),
                          ("export", "onnxruntime"), ("inference", "onnxruntime")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _internal_imports(name: str, path: Path) -> set[str]:
    """Modules of the package that ``name`` imports at its top level (relative imports)."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    deps = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            if node.module:
                deps.add(".".join([*base, node.module]))
            else:
                deps.update(".".join([*base, alias.name]) for alias in node.names)
    return {d for d in deps if d and d != name}


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS)
    assert set(_modules()) == layered, "add new modules to LAYERS (and to the README's layout paragraph)"


def test_imports_run_downward_only():
    layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    wrong = []
    for name, path in _modules().items():
        for dep in sorted(_internal_imports(name, path)):
            assert dep in layer_of, f"{name} imports {dep}, which is not a module of the package"
            if layer_of[dep] >= layer_of[name]:
                wrong.append(f"{name} (layer {layer_of[name]}) imports {dep} (layer {layer_of[dep]})")
    assert not wrong, "imports that do not run downward:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The analysis above can fail: a module that imports one of a higher layer is caught."""
    bad = tmp_path / "loader.py"
    bad.write_text("from .train import fit\nfrom . import runtime\n")
    assert _internal_imports("loader", bad) == {"train", "runtime"}


def test_no_imports_inside_functions():
    found = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom):
                        found.add((name, "." * inner.level + (inner.module or "")))
                    elif isinstance(inner, ast.Import):
                        found.update((name, alias.name) for alias in inner.names)
    assert found == FUNCTION_LEVEL_IMPORTS


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = ["cifar_resnet" + ("" if m == "__init__" else "." + m) for m in _modules() if m != "__main__"]

    def run(module: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], check=False, capture_output=True, text=True)
        return module, proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1]

    with ThreadPoolExecutor(2) as pool:
        failures = [(m, err) for m, code, err in pool.map(run, names) if code != 0]
    assert not failures, failures
