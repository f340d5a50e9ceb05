"""The layers of docs/layers.md, checked on the source: every import of every project module
(parsed with ast, lazy imports inside functions included) must go down the layers, and the module
graph has no cycle."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("arguments", "gaussian_renderer", "scene", "preprocess", "stages")
ENTRY_POINTS = ("train", "query", "render", "eval_lerf", "eval_scannet", "viewer", "sweep")
LEAVES = ("scene.atomic", "scene.names", "scene.errors")  # dependency-free helpers every layer may use

# what each layer may import besides itself and the leaves (docs/layers.md)
ALLOWED = {
    "arguments": set(),
    "gaussian_renderer": set(),
    "scene": {"gaussian_renderer", "arguments"},
    "preprocess": {"arguments", "scene"},
    "stages": {"arguments", "gaussian_renderer", "scene"},
    "entry": {"arguments", "gaussian_renderer", "scene", "preprocess", "stages"},
}


def project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            rel = p.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods[".".join(parts)] = p
    for e in ENTRY_POINTS:
        mods[e] = REPO / f"{e}.py"
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported by module ``name`` (``from a.b import c`` counts a.b.c when that is a
    module, else a.b)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def layer(mod: str) -> str:
    top = mod.split(".")[0]
    return "entry" if top in ENTRY_POINTS else top


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def test_imports_go_down_the_layers():
    bad = []
    for mod, deps in graph().items():
        for d in deps:
            if d in LEAVES or layer(d) == layer(mod):
                continue
            if layer(d) not in ALLOWED[layer(mod)]:
                bad.append(f"{mod} -> {d}")
    assert not bad, "forbidden imports (docs/layers.md): " + ", ".join(sorted(bad))


def test_leaves_import_nothing_of_the_project():
    g = graph()
    assert {leaf: g[leaf] for leaf in LEAVES} == {leaf: set() for leaf in LEAVES}


def test_no_import_cycle():
    g = graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d.startswith(m + ".") or m.startswith(d + "."):
                continue  # a package and its own submodules
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_checker_sees_a_forbidden_edge(tmp_path):
    """The parser resolves relative imports and lazy imports inside functions."""
    pkg = tmp_path / "gaussian_renderer"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from ..stages import rundir\n    from scene.mapping import smooth_knn\n")
    known = {"gaussian_renderer.x", "stages", "stages.rundir", "scene", "scene.mapping"}
    assert imports_of("gaussian_renderer.x", pkg / "x.py", known) == {"stages.rundir", "scene.mapping"}


def test_docs_table_matches_the_rules():
    """docs/layers.md's "may import" table says what ALLOWED enforces."""
    rows = {}
    for line in (REPO / "docs" / "layers.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("`").rstrip("/") for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and line.startswith("|") and cells[0] not in ("layer", "---"):
            name = "entry" if cells[0] == "entry points" else cells[0]
            rows[name] = set() if cells[1] == "nothing" else {c.strip() for c in cells[1].split(",")}
    assert rows == ALLOWED
