"""The wall-clock stop's decision (trainer/deadline.py), without processes: when one more step
would end past the deadline, and which of the two limits counts. The stop in a real 2-rank run is
in tests/test_long_runs.py."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
import torch

from trainer.deadline import Deadline

CPU = torch.device("cpu")


def test_no_limit_is_never_due() -> None:
    d = Deadline(0.0, 0.0, time.time(), CPU)
    assert d.at is None and not d.due() and not d.due()


def test_due_when_one_more_step_as_long_as_the_last_would_end_past_the_limit() -> None:
    d = Deadline(10.0, 0.0, time.time() - 8.0, CPU)  # 2 s left
    assert not d.due()  # no step measured yet, and the limit is ahead
    d.last = time.time() - 1.0  # the last step took 1 s: one more ends 1 s before the limit
    assert not d.due()
    d.last = time.time() - 3.0  # a 3 s step would end past it
    assert d.due()


def test_the_earlier_of_the_two_limits_counts() -> None:
    now = time.time()
    assert Deadline(100.0, now + 5.0, now, CPU).at == pytest.approx(now + 5.0)
    assert Deadline(5.0, now + 100.0, now, CPU).at == pytest.approx(now + 5.0)


def test_a_stop_at_in_the_past_is_refused() -> None:
    with pytest.raises(ValueError, match=r"train\.stop_at \(.*\) has passed"):
        Deadline(0.0, time.time() - 60.0, time.time(), CPU)


def test_the_eta_is_the_time_limits_when_that_comes_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run planned for more steps than its time allows reports the time left, marked, not the
    steps' ETA (the demo plans generously and lets the limit end it)."""
    from trainer.metrics import TrainMetrics

    caplog.set_level(logging.INFO, logger="trainer.metrics")
    step = {"loss": 1.0, "grad_norm": 1.0, "lr": 1e-3, "tokens": 10, "samples": 1, "flops": 1.0}
    m = TrainMetrics(tmp_path, 0, 1000, 1, 1.0, 1)
    m.t_start = time.monotonic() - 1.0  # one step took 1 s: 999 s for the rest
    m.update(1, 0, step)
    assert re.search(r"eta (99[89]|1000)s$", caplog.records[-1].getMessage())
    m.ends_at = time.time() + 60.0
    m.update(2, 0, step)
    assert re.search(r"eta (59|60)s \(time limit\)$", caplog.records[-1].getMessage())
    m.ends_at = time.time() + 1e6  # a limit after the steps' end: the steps' ETA
    m.update(3, 0, step)
    assert re.search(r"eta 3\d\ds$", caplog.records[-1].getMessage())  # ~999 / 3
    m.writer.close()
