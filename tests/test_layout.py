"""The README's package table and the package docstring list exactly what is in ``minimoe/``,
folder by folder."""

import pkgutil
import re
from pathlib import Path

import minimoe

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(minimoe.__file__).parent


def package_rows() -> list[tuple[set[str], str]]:
    """(names in the module column, text of the description column) per row of the table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The package\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for row in section.splitlines():
        cells = row.split("|")
        if row.startswith("|") and len(cells) > 3:
            rows.append((set(re.findall(r"`([\w/.]+)`", cells[2])), cells[3]))
    return rows


def test_readme_package_table_matches_the_tree():
    tree = {f"{m.name}/" if m.ispkg else f"{m.name}.py"
            for m in pkgutil.iter_modules([str(PKG)])}
    tree |= {f"{p.name}/" for p in PKG.iterdir()
             if p.is_dir() and not (p / "__init__.py").exists() and not p.name.startswith(("__", "."))}
    assert set().union(*(names for names, _ in package_rows())) == tree


def test_each_folder_row_names_exactly_its_modules():
    folders = 0
    for names, description in package_rows():
        for name in names:
            if name.endswith("/") and (PKG / name / "__init__.py").exists():
                modules = {f"{m.name}.py" for m in pkgutil.iter_modules([str(PKG / name)])}
                named = set(re.findall(r"`(\w+\.py)`", description))
                assert named == modules, (name, named ^ modules)
                folders += 1
    assert folders >= 9


def test_each_folder_docstring_lists_its_modules():
    for init in PKG.glob("*/__init__.py"):
        modules = {m.name for m in pkgutil.iter_modules([str(init.parent)])}
        doc = (init.read_text().split('"""')[1])
        listed = {name for name in modules if re.search(rf"\b{name}\b", doc)}
        assert listed == modules, (init.parent.name, modules - listed)


def test_package_docstring_maps_every_module_and_folder():
    """The map in ``minimoe/__init__.py``: notebook numbers, then from column 11 the names of a
    row ("cost/, parallel/, checkpoints") and its description; wrapped lines are indented more."""
    doc = minimoe.__doc__.split("on the left):\n\n", 1)[1].split("\n\n", 1)[0]
    mapped = set()
    for line in doc.splitlines():
        if len(line) > 11 and line[10] == " " and line[11] != " ":
            names = re.match(r"\w+/?(?:, \w+/?)*", line[11:]).group(0)
            mapped |= set(names.split(", "))
    tree = {f"{m.name}/" if m.ispkg else m.name for m in pkgutil.iter_modules([str(PKG)])}
    assert mapped == tree, mapped ^ tree
