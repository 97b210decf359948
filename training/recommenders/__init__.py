"""Every recommender nextbest ships, by the name the CLI and the registry use.

The names are listed here with where each class lives, and a class is imported only when asked
for: the command line lists the names in its help without loading implicit, scikit-learn and
the rest (``nextbest --help`` would otherwise take seconds).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.recommenders.base import Recommender

_WHERE: dict[str, tuple[str, str]] = {
    "als": ("factorization", "ALSRecommender"),
    "bpr": ("factorization", "BPRRecommender"),
    "itemknn": ("neighbors", "ItemKNNRecommender"),
    "ease": ("ease", "EASERecommender"),
    "popularity": ("popularity", "PopularityRecommender"),
    "trending": ("popularity", "TrendingRecommender"),
    "content": ("content", "ContentRecommender"),
}
NAMES: tuple[str, ...] = tuple(_WHERE)
"""The recommenders' names, in the order the CLI lists them."""


def recommender_class(name: str) -> type[Recommender]:
    """The class of the recommender called ``name``, or an error that lists the names."""
    try:
        module, cls = _WHERE[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; expected one of: {', '.join(NAMES)}") from None
    return getattr(import_module(f"training.recommenders.{module}"), cls)


def make_recommender(name: str, **params) -> Recommender:
    """A recommender by name, with these hyperparameters."""
    return recommender_class(name)(**params)


__all__ = ["NAMES", "make_recommender", "recommender_class"]
