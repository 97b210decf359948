"""How a training job says where it is, to whoever runs it.

A job calls ``stage`` as each step begins and ``trial`` after each search trial; the base class
reports nothing (notebooks and tests), and the command line's subclass draws them with rich.
"""

from __future__ import annotations


class JobProgress:
    """Reports nothing: the default for jobs run from Python."""

    def stage(self, description: str) -> None:
        """A step of the job begins (reading the warehouse, fitting, evaluating, ...)."""

    def trial(self, number: int, elapsed: float, budget: float, score: float, best: float) -> None:
        """Search trial ``number`` (from 1) scored ``score``; ``best`` so far; ``elapsed`` of
        the ``budget`` seconds are used."""
