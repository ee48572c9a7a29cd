#!/usr/bin/env python
"""Lines per module of the ``lrm`` package, as a markdown table (docs/architecture.md, "Module sizes").

    python tools/module_sizes.py                          # print the table
    python tools/module_sizes.py --write docs/architecture.md   # replace the table between the markers
    python tools/module_sizes.py --check docs/architecture.md   # exit 1 when the table there is out of date

``lines`` counts every line (``wc -l``); ``code`` leaves out blank lines, comment-only lines and docstrings.
"""
from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- module-sizes:start -->", "<!-- module-sizes:end -->"


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    doc = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                doc.update(range(first.lineno, first.end_lineno + 1))
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):
            continue
        lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - doc)


def sizes(package: Path) -> list:
    """[(module path relative to the checkout, lines, code lines)] for every .py file, sorted by path."""
    out = []
    for p in sorted(package.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        src = p.read_text(encoding="utf-8")
        out.append((p.relative_to(package.parent).as_posix(), src.count("\n"), code_lines(src)))
    return out


def table(rows: list) -> str:
    lines = ["| module | lines | code |", "|---|---:|---:|"]
    lines += [f"| `{m}` | {n} | {c} |" for m, n, c in rows]
    lines.append(f"| **total** ({len(rows)} modules) | {sum(r[1] for r in rows)} | {sum(r[2] for r in rows)} |")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", metavar="DOC", help="replace the table between the markers in DOC")
    g.add_argument("--check", metavar="DOC", help="exit 1 if DOC's table differs from the current sizes")
    ap.add_argument("--package", default=str(ROOT / "lrm"))
    a = ap.parse_args(argv)
    block = table(sizes(Path(a.package)))
    doc = a.write or a.check
    if not doc:
        print(block)
        return 0
    try:
        text = Path(doc).read_text(encoding="utf-8")
        new = replace_block(text, block)
    except (OSError, ValueError) as e:
        print(f"error: {doc}: {e}", file=sys.stderr)
        return 2
    if a.check:
        if new != text:
            print(f"{doc}: module-size table out of date (python tools/module_sizes.py --write {doc})", file=sys.stderr)
            return 1
        return 0
    Path(doc).write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
