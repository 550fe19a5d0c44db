"""Re-execute notebooks in place with the current environment's kernel (``make notebooks``).

This is how stored outputs are refreshed after a package change. Volatile metadata
(execution timestamps, widget state) is removed; outputs are kept, since nbval checks them.
Prints each notebook's wall time; with ``--record-runtimes`` also stores it in
``notebooks/runtimes.json``, the one table the README and the notebook headers are written from
(``tools/runtimes.py``).
"""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import runtimes

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def settle(text: str) -> str:
    """A stream's text as a terminal shows it: each line's last carriage-return overwrite
    (a progress bar's final state), not every intermediate one."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def merge_streams(outputs: list) -> list:
    """Adjacent pieces of one stream as one text: the kernel sends a cell's prints and a
    bar's updates in chunks that differ from run to run, and nbval compares them joined."""
    merged = []
    for out in outputs:
        if (out.get("output_type") == "stream" and merged
                and merged[-1].get("output_type") == "stream"
                and merged[-1]["name"] == out["name"]):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    return merged


def clean(nb) -> None:
    nb.metadata.pop("widgets", None)
    # the kernelspec ipykernel installs: JupyterLab rewrites any other one when it opens the
    # notebook, and the notebook shows as modified before the learner has touched it
    nb.metadata["kernelspec"] = KERNELSPEC
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if "outputs" not in cell:
            continue
        merged = merge_streams(cell["outputs"])
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = settle(out["text"])
        # a bar's closing newline can arrive after the cell's last print: an output of
        # nothing but line breaks shows as an empty box
        merged = [out for out in merged if out.get("output_type") != "stream"
                  or out["name"] != "stderr" or out["text"].strip()]
        cell["outputs"] = merge_streams(merged)


def main(args: list[str]) -> int:
    record = "--record-runtimes" in args  # measured alone on the machine: the README's figures
    paths = [a for a in args if a != "--record-runtimes"]
    # stored training cells show a finished text bar, not a widget frozen at 0%
    os.environ["MINIMOE_PROGRESS"] = "text"
    if not paths:
        print("usage: execute_notebooks.py [--record-runtimes] NOTEBOOK.ipynb ...")
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
        seconds = time.perf_counter() - t0
        clean(nb)
        nbformat.write(nb, p)
        if record:
            runtimes.record(p, seconds)
        print(f"{p.name}: {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
