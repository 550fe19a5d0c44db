"""Re-execute notebooks in place with the current environment's kernel (``make notebooks``).

This is how stored outputs are refreshed after a package change. Volatile metadata
(execution timestamps, widget state) is removed; outputs are kept, since nbval checks them.
Prints each notebook's wall time, the figure the README reports.
"""

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def clean(nb) -> None:
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: execute_notebooks.py NOTEBOOK.ipynb ...")
        return 2
    for p in map(Path, paths):
        nb = nbformat.read(p, as_version=4)
        t0 = time.perf_counter()
        client = NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                                resources={"metadata": {"path": str(p.parent)}})
        try:
            client.execute()
        except CellExecutionError as e:  # keep what ran, so the failing cell can be read
            clean(nb)
            nbformat.write(nb, p)
            print(f"{p.name}: FAILED after {time.perf_counter() - t0:.0f} s\n{e}", flush=True)
            return 1
        clean(nb)
        nbformat.write(nb, p)
        print(f"{p.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
