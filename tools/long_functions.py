"""List functions longer than a limit in the package folders (issue 28, item 2).

A check script, not a test: it prints a table sorted by length so the
remaining long functions stay visible while they are split up.

    python tools/long_functions.py [--limit 60] [--with-decorators] [folders...]
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDERS = ("cbdm_core", "cli", "plugins")


def function_lengths(path: Path, decorators: bool = False) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length in lines) of every function in a file.

    Lengths run from the `def` line; `decorators=True` also counts decorator
    lines (click commands carry many declarative option lines).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = child.lineno
                if decorators:
                    first = min([first] + [d.lineno for d in child.decorator_list])
                name = f"{prefix}{child.name}"
                found.append((name, first, child.end_lineno - first + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def long_functions(
    folders: list[str], limit: int, decorators: bool = False
) -> list[tuple[int, str, str, int]]:
    """(length, file, name, line) of every function over `limit` lines, longest first."""
    rows = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for name, line, length in function_lengths(path, decorators):
                if length > limit:
                    rows.append((length, rel, name, line))
    return sorted(rows, key=lambda r: (-r[0], r[1], r[3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--with-decorators", action="store_true",
                        help="count decorator lines as part of a function")
    parser.add_argument("folders", nargs="*", default=list(DEFAULT_FOLDERS))
    args = parser.parse_args()
    rows = long_functions(args.folders, args.limit, args.with_decorators)
    for length, rel, name, line in rows:
        print(f"{length:5d}  {rel}:{line}  {name}")
    print(f"{len(rows)} function(s) over {args.limit} lines")


if __name__ == "__main__":
    main()
