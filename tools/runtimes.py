"""One measured table of notebook runtimes, written into the README and every notebook header.

``make notebooks`` re-executes the notebooks and records each one's wall time in
``notebooks/runtimes.json``; ``python tools/runtimes.py`` (run by ``make notebooks`` too) then
rewrites the README's runtime table (between the ``runtimes`` markers) and the ``**Runtime.**``
line of every notebook's first cell from that file, so the two can never disagree.
Measure on an otherwise idle machine: the figures are what a learner should expect.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "notebooks" / "runtimes.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- runtimes:begin -->", "<!-- runtimes:end -->"


def load() -> dict:
    if TABLE.exists():
        return json.loads(TABLE.read_text())
    return {"machine": "2-core x86 CPU, pinned stack (requirements-lock.txt)", "seconds": {}}


def record(notebook: Path, seconds: float) -> None:
    """Store one notebook's measured wall time (whole seconds) in ``runtimes.json``."""
    table = load()
    table["seconds"][notebook.stem] = round(seconds)
    table["seconds"] = dict(sorted(table["seconds"].items()))
    TABLE.write_text(json.dumps(table, indent=1) + "\n")


def phrase(seconds: int) -> str:
    """How a header says a runtime: '40 seconds', 'about 2½ minutes'."""
    if seconds < 90:
        return f"about {max(5, 5 * round(seconds / 5))} seconds"
    halves = round(seconds / 30) / 2
    whole, half = int(halves), halves % 1 == 0.5
    return f"about {whole}{'½' if half else ''} minutes"


def readme_table(table: dict) -> str:
    secs = table["seconds"]
    nums = [k.split("_")[0] for k in secs]
    total = sum(secs.values())
    return "\n".join([
        BEGIN,
        "| notebook | " + " | ".join(nums) + " | all |",
        "|---|" + "---|" * (len(nums) + 1),
        "| seconds | " + " | ".join(str(v) for v in secs.values()) + f" | {total} |",
        END,
    ])


def sync() -> list[str]:
    """Rewrite README and notebook headers from ``runtimes.json``; returns what changed."""
    import nbformat

    table, changed = load(), []
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), readme_table(table), text,
                 flags=re.S)
    if new != text:
        README.write_text(new)
        changed.append("README.md")
    for stem, seconds in table["seconds"].items():
        path = ROOT / "notebooks" / f"{stem}.ipynb"
        if not path.exists():
            raise SystemExit(f"runtimes.json names {stem!r}, but {path} does not exist")
        nb = nbformat.read(path, as_version=4)
        head = nb.cells[0]
        line = (f"**Runtime.** {phrase(seconds).capitalize()} on a 2-core CPU "
                f"({seconds} s measured; the README's table comes from the same run).")
        src, n = re.subn(r"^\*\*Runtime\.\*\*.*?(?=\n\n|\n\*\*|\Z)", line, head.source,
                         count=1, flags=re.M | re.S)
        if n == 0:
            raise SystemExit(f"{path.name}: its first cell has no '**Runtime.**' line")
        if src != head.source:
            head.source = src
            nbformat.write(nb, path)
            changed.append(path.name)
    return changed


if __name__ == "__main__":
    for name in sync():
        print("updated", name)
    sys.exit(0)
