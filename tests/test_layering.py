"""The dependency direction of the design: `pipeline` may import `engines`, never the reverse.

Checked on the source (every import statement, including ones inside functions), so a lazy
import that would only fail at run time is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """The project packages a file imports: "pipeline" or "engines" (their names under vap_video)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        mods: list[str] = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for m in mods:
            parts = m.split(".")
            if parts[0] == "vap_video" and len(parts) > 1:
                names.add(parts[1])
    return names


def test_engines_never_import_pipeline() -> None:
    offenders = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "vap_video" / "engines").rglob("*.py")
                       if "pipeline" in _imports(p))
    assert offenders == [], ("engines modules importing pipeline (the model side must not know the runtime): "
                             f"{offenders}")


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from vap_video.pipeline.frames import Detections\n")
    assert "pipeline" in _imports(f)


def test_one_letterbox_rule() -> None:
    """PAD_VALUE and the Letterbox transform are defined once (vap_video/engines/letterbox.py); everything else
    imports them, so training, CPU and GPU preprocessing and dehazing cannot drift apart."""
    defining = []
    for p in (ROOT / "vap_video").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PAD_VALUE"
                                                    for t in node.targets):
                defining.append(f"{p.relative_to(ROOT)}: PAD_VALUE")
            if isinstance(node, ast.ClassDef) and node.name in ("Letterbox", "LetterboxParams"):
                defining.append(f"{p.relative_to(ROOT)}: class {node.name}")
    assert sorted(defining) == ["vap_video/engines/letterbox.py: PAD_VALUE",
                                "vap_video/engines/letterbox.py: class Letterbox"], defining


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at module level (what runs at import time: these
    are the imports that can form a circle; imports inside functions are deliberate deferrals)."""
    files = [p for top in ("pipeline", "engines") for p in (ROOT / "vap_video" / top).rglob("*.py")]
    known = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for p in files:
        targets: set[str] = set()
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import nothing at run time
                continue
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for m in mods:
                while m and m not in known:
                    m = m.rpartition(".")[0]
                if m and m != _module_name(p):
                    targets.add(m)
        graph[_module_name(p)] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    assert _cycles(_module_graph()) == []


def test_the_circle_check_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_data_path_never_imports_the_offline_tools() -> None:
    tools = {m for m in _module_graph() if m.startswith("vap_video.pipeline.tools")}
    offenders = sorted(m for m, targets in _module_graph().items()
                       if not m.startswith(tuple(f"vap_video.pipeline.{x}" for x in ("tools", "cli", "cluster")))
                       and targets & tools)
    assert offenders == [], offenders
