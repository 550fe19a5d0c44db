"""The stored-output cleaning of ``tools/execute_notebooks.py`` (``make notebooks``)."""

import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import execute_notebooks  # noqa: E402


def stream(name, text):
    return nbformat.v4.new_output("stream", name=name, text=text)


def bar(percent, done):
    return f"\rtrain: {percent:3d}%|          | {done}/30 [00:00<?, ?it/s]"


def test_clean_keeps_every_finished_bar_and_drops_empty_stderr():
    # the pieces a kernel sends for three progress bars and a print, in the order they arrive
    pieces = []
    for run in range(3):
        pieces += [stream("stderr", bar(0, 0)), stream("stderr", bar(67, 20)),
                   stream("stderr", bar(100, 30))]
        if run < 2:
            pieces.append(stream("stderr", "\n"))
    pieces += [stream("stdout", "done\n"), stream("stderr", "\n")]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("train three models", outputs=pieces)]
    execute_notebooks.clean(nb)
    outputs = nb.cells[0].outputs
    assert [o["name"] for o in outputs] == ["stderr", "stdout"]
    assert outputs[0]["text"].split("\n") == [bar(100, 30)[1:]] * 3
    assert outputs[1]["text"] == "done\n"
    assert nb.metadata["kernelspec"] == execute_notebooks.KERNELSPEC


def test_settle_shows_what_a_terminal_shows():
    assert execute_notebooks.settle("a\rb\rc\nd") == "c\nd"


def test_clean_joins_the_chunks_of_one_stream():
    # prints arrive in chunks that vary run to run; an empty stderr between them goes too
    pieces = [stream("stdout", "step 1\nstep"), stream("stdout", " 2\n"), stream("stderr", "\n"),
              stream("stdout", "done\n"), stream("stderr", "warning\n"), stream("stdout", "end\n")]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print", outputs=pieces)]
    execute_notebooks.clean(nb)
    assert [(o["name"], o["text"]) for o in nb.cells[0].outputs] == [
        ("stdout", "step 1\nstep 2\ndone\n"), ("stderr", "warning\n"), ("stdout", "end\n")]
