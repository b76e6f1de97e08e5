"""recoverlib's own modules import each other without a cycle, imports inside functions included.

The graph is read from the source (``ast``), so an import hidden in a function body counts as much as one
at the top. ``from recoverlib.pkg import name`` is an edge to the module that defines ``name``: a submodule
of that name, else the module the package's lazy ``_EXPORTS`` names, else the package itself.
"""

import ast
from pathlib import Path

import recoverlib

ROOT = Path(recoverlib.__file__).parent


def module_files() -> dict[str, Path]:
    """``recoverlib.a.b`` -> its file, for every module and package of recoverlib."""
    files = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def lazy_exports(path: Path) -> dict[str, str]:
    """A package's ``_EXPORTS = {name: submodule}``, read without importing it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def edges(module: str, path: Path, files: dict[str, Path]) -> set[str]:
    """The recoverlib modules ``module`` imports anywhere in its file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in files}
        elif isinstance(node, ast.ImportFrom) and node.module in files and node.level == 0:
            exports = lazy_exports(files[node.module]) if files[node.module].name == "__init__.py" else {}
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in files:
                    out.add(sub)
                elif alias.name in exports:
                    out.add(f"{node.module}.{exports[alias.name]}")
                else:
                    out.add(node.module)
    out.discard(module)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_recoverlib_modules():
    files = module_files()
    graph = {m: edges(m, p, files) for m, p in files.items()}
    assert sum(map(len, graph.values())) > 100, "the graph reader found too few imports to be right"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# Modules that import vLLM at their top: the plugin's entry point imports them only once vLLM calls it.
LOADED_BY_VLLM = {"recoverlib.vllm_plugin.grouped_lora", "recoverlib.vllm_plugin.top_p",
                  "recoverlib.vllm_plugin.moe_gemm", "recoverlib.vllm_plugin.upcast_linear"}


def test_our_modules_are_imported_at_the_top():
    """Imports inside functions are for heavy optional libraries, not for recoverlib's own modules."""
    inner = set()
    for path in module_files().values():
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recoverlib"):
                if id(node) not in top:
                    inner.add(node.module)
            elif isinstance(node, ast.Import) and id(node) not in top:
                inner |= {a.name for a in node.names if a.name.startswith("recoverlib")}
    extra = sorted(inner - LOADED_BY_VLLM)
    assert not extra, f"recoverlib modules imported inside functions: {extra}"
