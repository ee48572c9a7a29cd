"""tools/module_sizes.py: the line counts behind docs/architecture.md's module-size table."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("module_sizes", ROOT / "tools" / "module_sizes.py")
ms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ms)


def test_code_lines_skip_blanks_comments_and_docstrings():
    src = ('"""module\ndoc"""\nimport os  # trailing comment counts as code\n\n# only a comment\n'
           'def f(x):\n    """doc"""\n    return (x +\n            1)\n\n\nclass A:\n    "doc"\n    y = "not a docstring"\n')
    # code: import, def, return (2 lines), class, y = ...
    assert ms.code_lines(src) == 6


def test_sizes_and_table_of_a_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "m.py").write_text("a = 1\n\nb = 2\n")
    rows = ms.sizes(pkg)
    assert rows == [("pkg/__init__.py", 0, 0), ("pkg/sub/m.py", 3, 2)]
    assert ms.table(rows).splitlines()[-1] == "| **total** (2 modules) | 3 | 2 |"


def test_write_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text(f"before\n{ms.START}\nold\n{ms.END}\nafter\n")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("x = 1\n")
    assert ms.main(["--check", str(doc), "--package", str(pkg)]) == 1
    assert ms.main(["--write", str(doc), "--package", str(pkg)]) == 0
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "| `pkg/m.py` | 1 | 1 |" in text
    assert "old" not in text
    assert ms.main(["--check", str(doc), "--package", str(pkg)]) == 0
    (tmp_path / "plain.md").write_text("no markers\n")
    assert ms.main(["--write", str(tmp_path / "plain.md"), "--package", str(pkg)]) == 2
