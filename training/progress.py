"""How a training job says where it is, to whoever runs it.

A job calls ``stage`` as each step begins, ``trial`` after each search trial and ``warn`` when
it goes on without something; the base class logs the warnings and reports nothing else
(notebooks and tests), and the command line's subclass draws them all with rich.
"""

from __future__ import annotations

import logging

log = logging.getLogger("nextbest.training")


class JobProgress:
    """Reports nothing: the default for jobs run from Python."""

    def stage(self, description: str) -> None:
        """A step of the job begins (reading the warehouse, fitting, evaluating, ...)."""

    def trial(self, number: int, elapsed: float, budget: float, score: float, best: float) -> None:
        """Search trial ``number`` (from 1) scored ``score``; ``best`` so far; ``elapsed`` of
        the ``budget`` seconds are used."""

    def warn(self, message: str) -> None:
        """Something the job goes on without (stored events it left out, say)."""
        log.warning(message)
