"""The package's folders are stages of one pipeline: no two of them import each other."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dreamfusion"


def _folder_imports() -> dict[str, set[str]]:
    """folder -> the other folders of the package it imports from, at module level or inside a
    function (a lazy import ties two folders as much as one at the top)."""
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    imports: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue  # the top-level modules (api, cli, config...) compose the folders
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                head = name.split(".")
                if head[0] == "dreamfusion" and len(head) > 1 and head[1] in folders and head[1] != parts[0]:
                    imports[parts[0]].add(head[1])
    return imports


def test_no_two_folders_import_each_other():
    imports = _folder_imports()
    assert imports, "the scan found no imports between folders"
    both = sorted((a, b) for a in imports for b in imports[a] if a < b and a in imports.get(b, set()))
    assert both == [], f"folders that import each other: {both}"
