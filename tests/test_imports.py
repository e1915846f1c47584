"""The packages' import graph, read from the source (ast, imports inside functions included):
no circle between files, and no import up the floors (data <- pretrain <- finetune)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOORS = ("data", "pretrain", "finetune")       # each may import only the ones before it


def import_graph() -> dict:
    """{module: {project modules it imports}} over the three packages (package __init__
    files, which import nothing, are left out as targets)."""
    files = {}
    for package in FLOORS:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    files[module.removesuffix(".__init__")] = path
    graph = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[module] |= {t for t in targets if t in files and t != module
                              and not files[t].endswith("__init__.py")}
    return graph


def circles(graph: dict) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_files():
    assert circles(import_graph()) == []


def test_no_import_runs_up_the_floors():
    floor = {p: i for i, p in enumerate(FLOORS)}
    up = [f"{m} -> {t}" for m, targets in import_graph().items() for t in sorted(targets)
          if floor[t.split(".")[0]] > floor[m.split(".")[0]]]
    assert up == []


def test_the_walk_sees_circles_and_lazy_imports():
    """The checks can fail: a circle made of an import inside a function is found."""
    graph = import_graph()
    assert "data.manifest" in graph["data.stream"]          # a module-level import is seen
    graph["data.manifest"] = graph["data.manifest"] | {"data.stream"}
    assert any({"data.manifest", "data.stream"} <= set(c) for c in circles(graph))
    assert "finetune.models" in import_graph()["finetune.init"]   # inside a function
