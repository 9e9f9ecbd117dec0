"""The floors of docs/architecture.md hold: no module of `dmin/` imports from a floor above its own (lazy imports
inside functions included), and the library never imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dmin"
DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"

FLOORS = {  # module (dotted, below dmin) → floor; a package name covers its modules unless listed apart
    "errors": 0, "version": 0, "findings": 0, "hashing": 0, "store.paths": 0, "store.keys": 0, "store.pages": 0,
    "kernels": 1, "models": 1, "data": 1, "batching": 1, "per_example": 1, "topk": 1,
    "compressor": 2, "store": 2,
    "vs": 3, "gradients": 3,
    "score": 4, "index": 4, "index_check": 4, "precondition": 4, "derive": 4, "forget": 4, "merge": 4,
    "relocate": 4, "sql": 4,
    "collect": 5, "query": 5, "compact": 5, "verify": 5, "info": 5,
    "sheet": 6, "demo": 6,
    "": 7,  # the package root: the public API
}  # fmt: skip


def floor_of(dotted: str) -> int:
    """The floor of dmin.<dotted>: its own entry, else its package's."""
    parts = dotted.split(".") if dotted else []
    for end in range(len(parts), -1, -1):
        name = ".".join(parts[:end])
        if name in FLOORS:
            return FLOORS[name]
    raise AssertionError(f"dmin.{dotted} sits on no floor: add it to docs/architecture.md and FLOORS")


def imports(path: Path) -> list[tuple[str, int]]:
    """(dmin-relative module, line) of every import of dmin in a file, at any depth."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "dmin" or a.name.startswith("dmin."):
                    found.append((a.name[5:], node.lineno))
                elif a.name.split(".")[0] in ("dmin_cli", "typer"):
                    found.append(("<cli>", node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "dmin" or node.module.startswith("dmin."):  # `from dmin.store import paths`: a module
                base = node.module[5:]
                for a in node.names:
                    sub = f"{base}.{a.name}".lstrip(".")
                    is_module = (PKG / sub.replace(".", "/")).with_suffix(".py").is_file()
                    found.append((sub if is_module else base, node.lineno))
            elif node.module.startswith("dmin_cli") or node.module == "typer":
                found.append(("<cli>", node.lineno))
    return found


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        own = ".".join(p for p in rel.parts if p != "__init__")
        mine = floor_of(own)
        for target, line in imports(path):
            if target == "<cli>":
                wrong.append(f"{path.relative_to(PKG.parent)}:{line} imports the CLI (or typer)")
            elif floor_of(target) > mine and not target.startswith(own + ".") and own != "":
                wrong.append(f"{path.relative_to(PKG.parent)}:{line} (floor {mine}) imports dmin.{target} "
                             f"(floor {floor_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_floor_the_doc_names() -> None:
    doc = DOC.read_text()
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        if rel.name == "__init__":
            continue
        floor_of(".".join(rel.parts))
        assert f"`{rel.name}`" in doc or f"`{rel.parts[0]}/`" in doc, f"docs/architecture.md never names {rel}"
