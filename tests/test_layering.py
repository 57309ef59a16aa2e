"""The dependency direction of the design: `pipeline` may import `engines`, never the reverse.

Checked on the source (every import statement, including ones inside functions), so a lazy
import that would only fail at run time is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_engines_never_import_pipeline() -> None:
    offenders = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "engines").rglob("*.py")
                       if "pipeline" in _imports(p))
    assert offenders == [], ("engines modules importing pipeline (the model side must not know the runtime): "
                             f"{offenders}")


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from pipeline.frames import Detections\n")
    assert "pipeline" in _imports(f)


def test_one_letterbox_rule() -> None:
    """PAD_VALUE and the Letterbox transform are defined once (engines/letterbox.py); everything else
    imports them, so training, CPU and GPU preprocessing and dehazing cannot drift apart."""
    defining = []
    for p in list((ROOT / "engines").rglob("*.py")) + list((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PAD_VALUE"
                                                    for t in node.targets):
                defining.append(f"{p.relative_to(ROOT)}: PAD_VALUE")
            if isinstance(node, ast.ClassDef) and node.name in ("Letterbox", "LetterboxParams"):
                defining.append(f"{p.relative_to(ROOT)}: class {node.name}")
    assert sorted(defining) == ["engines/letterbox.py: PAD_VALUE", "engines/letterbox.py: class Letterbox"], defining
