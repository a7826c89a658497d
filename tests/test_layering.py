"""The package's import graph points down the layers of docs/design.md and has no cycle."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rlhf_jax"
# lower index = lower layer; a module may import its own layer or lower ones
LAYERS = [("_lazy",), ("sharding", "checkpoint"), ("data",), ("models",), ("sampling",), ("losses",),
          ("reward", "ppo", "offline", "eval", "train", "labelling", "rlaif",
           "interpret"), ("stages",), ("studies",)]
ALLOWED_ACROSS = {("ppo", "reward"), ("eval", "reward"), ("labelling", "train"), ("rlaif", "eval"),
                  ("interpret", "reward"), ("interpret", "eval")}


def _layer(package: str) -> int:
    for i, names in enumerate(LAYERS):
        if package in names:
            return i
    raise AssertionError(f"rlhf_jax.{package} is in no layer of LAYERS: add it where "
                         "docs/design.md puts it")


def _imports() -> dict:
    """{module: set of rlhf_jax modules it imports (module level or inside functions)}."""
    graph = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("rlhf_jax"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("rlhf_jax"))
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_exports":
                # a package's lazy re-exports: edges to the submodules it loads on first use
                for key in node.args[1].keys:
                    deps.add(key.value if key.value.startswith("rlhf_jax.")
                             else f"{name}.{key.value}")
        graph[name] = deps
    return {k: {d for d in v if d in graph} for k, v in graph.items()}


def test_imports_point_down_the_layers():
    bad = []
    for module, deps in _imports().items():
        parts = module.split(".")
        if len(parts) < 2:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if len(dparts) < 2 or dparts[1] == parts[1]:
                continue
            a, b = parts[1], dparts[1]
            if _layer(b) > _layer(a) or (_layer(b) == _layer(a)
                                         and (a, b) not in ALLOWED_ACROSS):
                bad.append(f"{module} imports {dep}")
    assert not bad, bad


def test_no_import_cycle_between_modules():
    """Cycles among modules, counting `from rlhf_jax.pkg import X` as an edge to the package's
    __init__ (which imports its submodules) and an __init__'s re-exports as its edges."""
    graph = _imports()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if dep == node or (node.startswith(dep + ".") and dep.count(".") == 1):
                continue  # a submodule importing its own package while it initialises
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_lazy_export_is_also_a_submodule():
    """A name a package re-exports lazily must not name one of its submodules: importing that
    submodule (anywhere) sets the package's attribute to the module, and the re-exported
    function would then read as a module."""
    clashes = []
    for init in PKG.rglob("__init__.py"):
        for node in ast.walk(ast.parse(init.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_exports":
                for names in node.args[1].values:
                    for elt in names.elts:
                        if (init.parent / f"{elt.value}.py").exists() or \
                                (init.parent / elt.value / "__init__.py").exists():
                            clashes.append(f"{init.parent.name}.{elt.value}")
    assert not clashes, clashes
