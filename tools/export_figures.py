"""Copy the README's figures out of the executed notebooks into assets/ (``make notebooks``).

Each entry names a notebook, the index of a figure among its PNG outputs, and a file name.
"""

import base64
import sys
from pathlib import Path

import nbformat

FIGURES = [
    ("04_deepseek_moe.ipynb", 0, "dense_vs_moe.png"),
    ("03_routing_and_load_balancing.ipynb", 0, "load_per_expert.png"),
    ("08_cost_analysis.ipynb", 1, "roofline.png"),
]


def main(root: Path) -> int:
    for name, index, out in FIGURES:
        path = root / "notebooks" / name
        if not path.exists():
            print(f"skip {out}: {name} not found")
            continue
        pngs = [o["data"]["image/png"] for c in nbformat.read(path, 4).cells if c.cell_type == "code"
                for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        if index >= len(pngs):
            print(f"skip {out}: {name} has {len(pngs)} figures")
            continue
        (root / "assets" / out).write_bytes(base64.b64decode(pngs[index]))
        print(f"assets/{out} <- {name} figure {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]))
