"""The package's shape: imports run one way (from the CLI down to the data), no import inside a function
but for optional dependencies, and every module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cifar_resnet"

# Inside its layer the data package has an order of its own, lowest first: each of its modules may
# import only modules of the package listed before it, and none of the layer's other modules.
DATA_ORDER = [
    {"data.errors"},
    {"data.unpickle", "data.download"},
    {"data.sources"},
    {"data.splits", "data.folders"},
    {"data"},
]
# The sweep package likewise, in its layer: the sweep file, the study, then the worker and the report apart.
SWEEP_ORDER = [{"sweep.spec"}, {"sweep.study"}, {"sweep.worker", "sweep.report"}, {"sweep"}]
ORDERS = [DATA_ORDER, SWEEP_ORDER]

# Each module may import only modules of a lower layer (the README's "How the code is laid out").
LAYERS = [
    {"console", "version", "serve_limits"},
    {"images"},
    {
        *set().union(*DATA_ORDER),
        "augment",
        "device",
        "memory",
        "rng",
        "signals",
        "distributed",
        "model_folder",
        "models.registry",
        "serve.batching",
    },
    {"models.seed", "models.resnet", "models.fast", "loader", "config", "metrics", "divergence"},
    {"models", "optim", "drop_easy"},
    {"checkpoint", "engine"},
    {"budget"},
    {"plots", "inference", "train", "lr_find"},
    {
        "evaluate",
        "interpret",
        "predict",
        "notebook",
        "calibration",
        "export",
        "hub",
        "serve.app",
        *set().union(*SWEEP_ORDER),
    },
    {"cli_parsers"},
    {"cli", "__init__", "serve"},
    {"__main__"},
]

# Imports inside functions that are allowed, and why: optional dependencies, imported only when asked for.
FUNCTION_LEVEL_IMPORTS = {
    ("train", "torch.utils.tensorboard"),
    ("cli", ".serve"),
    ("export", "onnx"),
    ("export", "onnxruntime"),
    ("inference", "onnxruntime"),
    ("hub", "huggingface_hub"),
    ("sweep.study", "optuna"),
}


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


def _upward_imports(imports: dict[str, set[str]]) -> list[str]:
    """The imports (module -> modules of the package it imports) that do not run downward."""
    layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    # (which order, rank in it) of the modules of a package with an order of its own
    rank = {m: (k, i) for k, order in enumerate(ORDERS) for i, group in enumerate(order) for m in group}
    wrong = []
    for name, deps in imports.items():
        for dep in sorted(deps):
            assert dep in layer_of, f"{name} imports {dep}, which is not a module of the package"
            if layer_of[dep] < layer_of[name]:
                continue
            if layer_of[dep] == layer_of[name] and name in rank and dep in rank:
                (order, at), (dep_order, dep_at) = rank[name], rank[dep]
                if order == dep_order and dep_at < at:
                    continue  # within a package with an order, from one of its earlier modules
            wrong.append(f"{name} (layer {layer_of[name]}) imports {dep} (layer {layer_of[dep]})")
    return wrong


def test_imports_run_downward_only():
    wrong = _upward_imports({name: _internal_imports(name, path) for name, path in _modules().items()})
    assert not wrong, "imports that do not run downward:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The analysis above can fail: a module that imports one of a higher layer is caught."""
    bad = tmp_path / "loader.py"
    bad.write_text("from .train import fit\nfrom . import device\n")
    assert _internal_imports("loader", bad) == {"train", "device"}
    assert _upward_imports({"loader": {"train", "device"}}) == ["loader (layer 3) imports train (layer 7)"]


def test_the_checker_sees_an_import_against_the_data_order(tmp_path):
    """Inside the data package imports run one way too, and the lowest layer's other modules stay apart."""
    sources = tmp_path / "data" / "sources.py"
    sources.parent.mkdir()
    sources.write_text("from .errors import DataError\nfrom .splits import subsample\n")
    assert _internal_imports("data.sources", sources) == {"data.errors", "data.splits"}
    allowed = {
        "data.sources": {"data.errors", "data.unpickle", "data.download"},
        "data": {"data.splits"},
        "loader": {"data"},
        "data.splits": {"data.sources"},
    }
    assert _upward_imports(allowed) == []
    for name, dep in [
        ("data.sources", "data.splits"),
        ("data.unpickle", "data.download"),
        ("data.errors", "data"),
        ("data.splits", "augment"),
        ("augment", "data"),
        ("augment", "data.errors"),
        ("data.sources", "loader"),
        ("data.splits", "data.splits"),
    ]:
        assert _upward_imports({name: {dep}}), f"{name} importing {dep} should be refused"


def test_the_checker_sees_an_import_against_the_sweep_order():
    """The sweep package's modules import one way: the sweep file, the study, then the worker and the report,
    which do not import each other."""
    allowed = {
        "sweep.study": {"sweep.spec"},
        "sweep.worker": {"sweep.spec", "sweep.study", "train"},
        "sweep.report": {"sweep.spec", "sweep.study", "plots"},
        "sweep": {"sweep.spec", "sweep.study", "sweep.worker", "sweep.report"},
        "cli": {"sweep"},
    }
    assert _upward_imports(allowed) == []
    for name, dep in [
        ("sweep.spec", "sweep.study"),
        ("sweep.study", "sweep.worker"),
        ("sweep.worker", "sweep.report"),
        ("sweep.report", "sweep.worker"),
        ("sweep.worker", "sweep"),
        ("sweep.spec", "evaluate"),
        ("evaluate", "sweep.spec"),
        ("data.splits", "sweep.spec"),
    ]:
        assert _upward_imports({name: {dep}}), f"{name} importing {dep} should be refused"


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


# Imports each module given on the command line in a forked child of an interpreter that has loaded the
# package's third-party dependencies but none of its own modules (imported once to find them, then dropped),
# so each child starts from no module of the package, as a fresh interpreter does, without paying torch's
# and matplotlib's import each time. Prints one line per module that does not import.
_IMPORT_EACH = """
import os, sys, traceback
package = sys.argv[1].split(".")[0]
for module in sys.argv[1:]:
    try:
        __import__(module)
    except BaseException:
        pass
for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
    del sys.modules[name]
running = {}  # a child per core at a time, each importing one module into a clean package
def reap():
    pid, status = os.wait()
    if os.WIFSIGNALED(status):
        os.write(1, f"{running[pid]} killed by signal {os.WTERMSIG(status)}\\n".encode())
    del running[pid]
for module in sys.argv[1:]:
    if len(running) >= (os.cpu_count() or 1):
        reap()
    pid = os.fork()
    if pid == 0:
        try:
            __import__(module)
        except BaseException:
            line = module + " " + traceback.format_exc().strip().splitlines()[-1] + "\\n"
            os.write(1, line.encode())  # one write: the children print side by side
            os._exit(1)
        os._exit(0)
    running[pid] = module
while running:
    reap()
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a child per module")
def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = ["cifar_resnet" + ("" if m == "__init__" else "." + m) for m in _modules() if m != "__main__"]
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *names], check=False, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "", proc.stdout


def test_the_import_check_sees_a_module_that_cannot_import_alone(tmp_path):
    """A circular import that works only when another module was imported first is caught."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from .b import B\nA = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("from .a import A\nB = 2\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    args = [sys.executable, "-c", _IMPORT_EACH, "pkg", "pkg.a", "pkg.b"]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, env=env, timeout=600)
    failed = sorted(line.split()[0] for line in proc.stdout.splitlines())
    assert failed == ["pkg.a", "pkg.b"], proc.stdout + proc.stderr


# The size of things: a newcomer reads any function in one screen and any module in one sitting.
MAX_FILE_LINES = 700
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6
# the public surfaces that mirror a command, the notebook's API or a model builder (whose signature is its model_kwargs)
MAX_FUNCTIONS_WITH_MANY_PARAMETERS = 10


def _is_parser_declaration(node: ast.FunctionDef) -> bool:
    """A function that only declares argparse options (``add_argument`` after ``add_argument``)."""
    calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)]
    declared = sum(c.func.attr in ("add_argument", "add_parser", "add_argument_group") for c in calls)
    return declared >= 10


def _sizes(path: Path) -> tuple[int, list[tuple[str, int, int]]]:
    """A module's line count, and (name, lines, parameters) of each function in it."""
    text = path.read_text()
    functions = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_parser_declaration(node):
            a = node.args
            params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            params += ["*"] * bool(a.vararg) + ["**"] * bool(a.kwarg)
            functions.append((f"{node.name} (line {node.lineno})", node.end_lineno - node.lineno + 1, len(params)))
    return text.count("\n"), functions


def _too_big(paths: dict[str, Path]) -> list[str]:
    found, many = [], []
    for name, path in sorted(paths.items()):
        lines, functions = _sizes(path)
        if lines > MAX_FILE_LINES:
            found.append(f"{name}: {lines} lines")
        found += [f"{name}.{f}: {n} lines" for f, n, _ in functions if n > MAX_FUNCTION_LINES]
        many += [f"{name}.{f}: {p} parameters" for f, _, p in functions if p > MAX_PARAMETERS]
    if len(many) > MAX_FUNCTIONS_WITH_MANY_PARAMETERS:
        found += [f"{len(many)} functions take more than {MAX_PARAMETERS} parameters:", *many]
    return found


def test_no_module_or_function_outgrows_a_reading():
    found = _too_big(_modules())
    assert not found, "\n".join(found)


def test_the_size_check_sees_a_long_function_and_a_long_parameter_list(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    wide = ", ".join(f"a{i}" for i in range(MAX_PARAMETERS + 1))
    n_wide = MAX_FUNCTIONS_WITH_MANY_PARAMETERS + 1
    (tmp_path / "m.py").write_text(
        f"def long():\n{body}\n\n" + "".join(f"def w{i}({wide}): ...\n" for i in range(n_wide))
    )
    found = _too_big({"m": tmp_path / "m.py"})
    assert found[0].startswith("m.long (line 1): 61 lines")
    assert f"{n_wide} functions take more than 6 parameters:" in found
    parser = "def p(s):\n" + "\n".join(f"    s.add_argument('--o{i}')" for i in range(70)) + "\n"
    (tmp_path / "p.py").write_text(parser)
    assert _too_big({"p": tmp_path / "p.py"}) == []
