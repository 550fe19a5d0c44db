import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from minimoe import diagrams  # noqa: E402


@pytest.mark.parametrize("name", ["moe_layer", "mla", "all_to_all"])
def test_diagram_draws_every_box_inside_its_canvas(name):
    fig = getattr(diagrams, name)()
    ax = fig.axes[0]
    assert ax.get_title()
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    boxes = [p for p in ax.patches if p.__class__.__name__ == "FancyBboxPatch"]
    assert len(boxes) >= 5
    for b in boxes:  # no box spills off the figure (a clipped label is a broken diagram)
        assert x0 <= b.get_x() and b.get_x() + b.get_width() <= x1, b
        assert y0 <= b.get_y() and b.get_y() + b.get_height() <= y1, b
    plt.close(fig)
