"""Time budgets: "30m", "2h", "90s" (a plain number is minutes), and the deadline a command keeps."""
import re
import time
from dataclasses import dataclass, field

from kit.core.errors import KitError

DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*")
UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, None: 60}


def parse_duration(text, option="--time-budget"):
    """'90m', '2h', '45s' or a number of minutes -> seconds (> 0)."""
    match = DURATION.fullmatch(str(text))
    if not match or float(match.group(1)) <= 0:
        raise KitError(f"{option} {text!r}: give a time such as 30m, 2h or 90s")
    return float(match.group(1)) * UNITS[match.group(2)]


@dataclass
class Deadline:
    """A budget of seconds from the moment it is made (a monotonic clock: a wall-clock change in a
    notebook does not move it)."""
    seconds: float
    started: float = field(default_factory=lambda: time.monotonic())

    def spent(self):
        return time.monotonic() - self.started

    def left(self):
        return self.seconds - self.spent()


def minutes(seconds):
    """A duration as the budget lines print it: '12.3 min' (never negative: time past is 0 left)."""
    return f"{max(seconds, 0) / 60:.1f} min"
