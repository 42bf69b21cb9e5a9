"""The one exception type that reaches users.

Anything a person can fix (a missing file, a bad config key, a corrupt image) raises
:class:`VislangError` with a message that names the file, row or key and says what to do.
The CLI prints the message without a traceback and exits non-zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VislangError(Exception):
    """An error caused by user input, with a message meant to be read by a person."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``name`` (for 'did you mean ...?' hints), or None."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' when a close choice exists, else ''."""
    match = closest(name, choices)
    return f" Did you mean '{match}'?" if match else ""
