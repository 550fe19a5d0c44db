"""The README's package table lists exactly what is in ``minimoe/``."""

import pkgutil
import re
from pathlib import Path

import minimoe

ROOT = Path(__file__).resolve().parents[1]


def package_table() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The package\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in section.splitlines():
        cells = row.split("|")
        if row.startswith("|") and len(cells) > 3:
            names.update(re.findall(r"`([\w/.]+)`", cells[2]))  # the module column
    return names


def test_readme_package_table_matches_the_tree():
    pkg = Path(minimoe.__file__).parent
    tree = {f"{m.name}/" if m.ispkg else f"{m.name}.py"
            for m in pkgutil.iter_modules([str(pkg)])}
    tree |= {f"{p.name}/" for p in pkg.iterdir()
             if p.is_dir() and not (p / "__init__.py").exists() and not p.name.startswith(("__", "."))}
    assert package_table() == tree
