"""Progress in a log file: a few plain lines, never one line of carriage-return updates."""
import logging

from kit.core import progress as progress_module
from kit.core.logs import setup
from kit.core.progress import progress


def test_a_non_terminal_gets_a_line_every_tenth_and_one_at_the_end(caplog):
    setup()
    with caplog.at_level(logging.INFO, logger="kit"):
        bar = progress(total=60, desc="train", unit="step")
        for step in range(60):
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train:")]
    assert len(lines) == 10 and all("\r" not in line for line in lines)
    assert lines[0].startswith("train: 6/60 step (10%) in") and lines[-1].startswith("train: 60/60 step (100%)")
    assert lines[-1].endswith("loss=0.0167")


def test_iterating_counts_each_item_and_ends_once(caplog):
    setup()
    with caplog.at_level(logging.INFO, logger="kit"):
        assert list(progress(range(3), desc="classify", unit="batch")) == [0, 1, 2]
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == [
        "classify: 1/3 batch (33%)", "classify: 2/3 batch (67%)", "classify: 3/3 batch (100%)"]


def test_tqdm_disable_and_disable_say_nothing(caplog, monkeypatch):
    setup()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with caplog.at_level(logging.INFO, logger="kit"):
        assert list(progress(range(5), desc="quiet")) == list(range(5))
        monkeypatch.delenv("TQDM_DISABLE")
        assert list(progress(range(5), desc="off", disable=True)) == list(range(5))
    assert not caplog.records


def test_a_terminal_gets_tqdms_bar(monkeypatch):
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress(range(2), desc="tty")
    assert type(bar).__module__.startswith("tqdm")
    bar.close()
