"""The stored notebooks' metadata: what JupyterLab would rewrite on opening them (and so mark
them modified before anyone has typed) must already be what it writes."""

import json
from pathlib import Path

import pytest
from ipykernel.kernelspec import KERNEL_NAME, get_kernel_dict

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernelspec_is_the_installed_kernels(path):
    spec = json.loads(path.read_text())["metadata"]["kernelspec"]
    installed = get_kernel_dict()
    assert spec == {"display_name": installed["display_name"], "language": installed["language"],
                    "name": KERNEL_NAME}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 11
