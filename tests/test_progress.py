"""Long steps say what they do: stage lines everywhere, a ticking clock and bars on a terminal only."""

import io
import sys
import threading
import time

import pytest

from genkit import progress


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, and that other threads may write to."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def isatty(self):
        return True

    def write(self, text):
        with self.lock:
            return super().write(text)

    def getvalue(self):
        with self.lock:
            return super().getvalue()


def wait_for(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_stage_lines_go_to_stderr_without_a_terminal_and_say_how_long(capsys):
    with progress.stage("building the thing"):
        progress.note("ignored without a terminal")
    with pytest.raises(KeyError), progress.stage("failing step"):
        raise KeyError("x")
    with progress.stage("hidden", enabled=False):
        pass
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and lines[0] == "genkit: building the thing ..." and lines[1].startswith("genkit: building the thing: done after")
    assert lines[3].startswith("genkit: failing step: stopped after") and "hidden" not in captured.err and "\r" not in captured.err
    bar = progress.bar(total=10)
    assert bar.disable  # no terminal, no bar
    bar.close()


def test_on_a_terminal_the_running_stage_ticks_with_its_detail(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(progress, "TICK_SECONDS", 0.01)
    with progress.stage("t-SNE of 2,000 latents"):
        progress.note("iteration 350 of 1000")
        wait_for(lambda: "t-SNE of 2,000 latents: 0 s (iteration 350 of 1000)" in terminal.getvalue())
    assert terminal.getvalue().rstrip().endswith("s") and "done after" in terminal.getvalue()
    bar = progress.bar(total=3, desc="generating")
    assert not bar.disable
    bar.close()
