"""pytest configuration for the notebook checks (nbval).

stderr (JAX's platform warnings, progress bars) and rich HTML/widget outputs vary between runs
and machines; they are not part of a notebook's contract. Plain-text outputs are.
"""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += (
            "stderr",
            "text/html",
            "application/javascript",
            "application/vnd.jupyter.widget-view+json",
        )
