"""The package's layers, read from the source (AST, nothing imported): every import of a
convgpu module, at module level or inside a function, must point to the same layer or one
below, and no chain of imports may come back to where it started. docs/architecture.md
describes the layers; LAYERS below is their order, lowest first.

    0 base       convgpu.arrays, convgpu.core      (what a call is; the environment)
    1 reference  convgpu.reference                 (the NumPy oracle: never the kernels)
    2 kernels    convgpu.kernels                   (numba/, cuda/ and its emulator/, dev/)
    3 ops        convgpu.ops                       (validate -> pick -> launch)
    4 package    everything else under convgpu     (the package, nn, train, the tools)

The tools (convgpu.tools: the CLI, check, bench, shapes) sit on top of rank 4: nothing
outside them imports them but `python -m convgpu` (convgpu.__main__).

Inside kernels/, the two backends stay apart (numba/ and cuda/ never import each other;
dev/ may import both), and the emulator sits below the loader that hands its kernels out.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# where each top package's files live (pyproject.toml's package-dir)
SOURCES = {"convgpu": ROOT / "python" / "convgpu", "convgpu.kernels": ROOT / "kernels",
           "convgpu.ops": ROOT / "ops"}
LAYERS = [("base", ("convgpu.arrays", "convgpu.core")),
          ("reference", ("convgpu.reference", "convgpu.reference_nhwc")),
          ("kernels", ("convgpu.kernels",)),
          ("ops", ("convgpu.ops",)),
          ("package", ("convgpu",))]
# folders whose function-level project imports must say why they are not at the top
EXPLAINED = ("convgpu.core", "convgpu.kernels", "convgpu.ops", "convgpu.reference",
             "convgpu.reference_nhwc",
             "convgpu.arrays")


def modules():
    """{module name: path} for every .py of the three source trees."""
    found = {}
    for top, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join((top,) + rel)] = path
    # a nested top (kernels, ops) is found twice through convgpu's folder only if it lives
    # there; it does not, so each name maps to one file
    return found


MODULES = modules()


def within(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def layer(name):
    """The rank of a module: the first (most specific) layer whose prefix holds it."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if within(name, p) and (best is None or len(p) > best[1]):
                best = (rank, len(p))
    return best[0]


def resolve(name):
    """The module an import names: itself if it is one, else the package holding it."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(name, path):
    """[(target module, line, nested, source line)] for every convgpu import in the file."""
    src = path.read_text()
    lines = src.splitlines()
    tree = ast.parse(src)
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - child.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in child.names] if base else []
            for t in targets:
                if t == "convgpu" or t.startswith("convgpu."):
                    out.append((resolve(t), child.lineno, nested, lines[child.lineno - 1]))
            visit(child, inner)

    visit(tree, False)
    return out


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def test_the_walk_sees_the_tree():
    """The walk finds the layers' modules and their imports (a walk that found nothing would
    pass every test below)."""
    for must in ("convgpu.core.args", "convgpu.kernels.cuda.gemm", "convgpu.kernels.numba.gemm",
                 "convgpu.kernels.cuda.emulator.cuda_host", "convgpu.ops.conv",
                 "convgpu.reference", "convgpu.tools.cli"):
        assert must in MODULES, must
    assert ("convgpu.core.args" in {t for t, *_ in GRAPH["convgpu.ops.conv"]})
    assert sum(len(v) for v in GRAPH.values()) > 100


def test_no_upward_arrows():
    bad = [f"{src} ({LAYERS[layer(src)][0]}) imports {dst} ({LAYERS[layer(dst)][0]}) at line "
           f"{line}" for src, edges in GRAPH.items() for dst, line, _, _ in edges
           if dst and layer(dst) > layer(src)]
    assert not bad, "\n".join(bad)


def test_backends_stay_apart():
    numba, cuda = "convgpu.kernels.numba", "convgpu.kernels.cuda"
    bad = [f"{src} imports {dst}" for src, edges in GRAPH.items() for dst, *_ in edges
           if dst and ((within(src, numba) and within(dst, cuda))
                       or (within(src, cuda) and within(dst, numba)))]
    assert not bad, "\n".join(bad)


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan), or a module that
    imports itself."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_no_import_circles():
    """Over every import, function-level ones included: a lazy import that closes a circle
    is still a circle. (The package's own __init__, which re-exports the ops, is left out
    as a target: `from convgpu import reference` names the module, not the package.)"""
    graph = {src: {dst for dst, *_ in edges if dst and dst != src and dst != "convgpu"}
             for src, edges in GRAPH.items()}
    found = cycles(graph)
    assert not found, found


def test_cycle_finder_finds_a_planted_circle():
    """The checker itself: a circle through a lazy import, as cli <-> bench was."""
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# a module a maintainer can read whole (the tests excepted): docs/architecture.md
MAX_LINES = 600


def test_no_module_is_over_600_lines():
    """Over ~600 lines a module holds several things: split it by what each part does, as
    tools/bench/ and nn/ are."""
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these (lines): {long}"


def test_the_tools_sit_on_top():
    """nn, train, the bridge and the rest of the package never reach up into the CLI's
    subpackage (function-level imports included)."""
    bad = [f"{src} imports {dst} at line {line}" for src, edges in GRAPH.items()
           for dst, line, *_ in edges
           if dst and within(dst, "convgpu.tools") and not within(src, "convgpu.tools")
           and src != "convgpu.__main__"]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("prefix", EXPLAINED)
def test_hidden_imports_say_why(prefix):
    """In the layers below the package, a project import inside a function carries a
    comment on its line saying why (a circle it breaks, an optional heavy dependency it
    defers); everything else is imported at the top."""
    bad = [f"{src}:{line}: {text.strip()}" for src, edges in GRAPH.items()
           if within(src, prefix) for dst, line, nested, text in edges
           if nested and "#" not in text]
    assert not bad, "\n".join(bad)


def test_cuda_launchers_load_and_run_without_numba_or_cupy():
    """The CUDA C launchers import neither Numba nor CuPy at module level: with both made
    unimportable, every launcher module loads, and an emulated relu runs (where g++ is)."""
    import os
    import subprocess
    import sys
    code = ("import sys\n"
            "sys.modules['numba'] = None\n"
            "sys.modules['cupy'] = None\n"
            "from convgpu.kernels.cuda import launcher_modules\n"
            "mods = launcher_modules()\n"
            "import numpy as np, convgpu, shutil\n"
            "assert 'numba' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "if shutil.which('g++'):\n"
            "    y = convgpu.relu(np.array([-1.0, 2.0]), backend='cuda')\n"
            "    assert y.tolist() == [0.0, 2.0], y\n"
            "print(len(mods))\n")
    env = dict(os.environ, CONVGPU_CUDA_HOST="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) >= 12
