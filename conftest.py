"""pytest configuration for the notebook checks (nbval).

stderr (JAX's platform warnings, progress bars) and rich HTML/widget outputs vary between runs
and machines; they are not part of a notebook's contract. Plain-text outputs are.
"""

import os

# Training cells store a finished text progress bar, not a widget (minimoe.training.train.progress_bar);
# the kernels nbval starts inherit this environment.
os.environ.setdefault("MINIMOE_PROGRESS", "text")


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += (
            "stderr",
            "text/html",
            "application/javascript",
            "application/vnd.jupyter.widget-view+json",
        )


def pytest_collection_modifyitems(items):
    # nbval waits only 5 s for a cell's outputs once the cell has finished; on a loaded 2-core
    # machine a training cell's progress-bar messages can take longer to drain.
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = 120
