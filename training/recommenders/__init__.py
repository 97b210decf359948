"""Every recommender nextbest ships, by the name the CLI and the registry use."""

from training.recommenders.base import NotFittedError, Recommender
from training.recommenders.content import ContentRecommender
from training.recommenders.ease import EASERecommender
from training.recommenders.factorization import ALSRecommender, BPRRecommender
from training.recommenders.neighbors import ItemKNNRecommender
from training.recommenders.popularity import PopularityRecommender, TrendingRecommender

RECOMMENDERS: dict[str, type[Recommender]] = {
    model.name: model
    for model in (ALSRecommender, BPRRecommender, ItemKNNRecommender, EASERecommender,
                  PopularityRecommender, TrendingRecommender, ContentRecommender)
}


def make_recommender(name: str, **params) -> Recommender:
    """A recommender by name, or an error that lists the names that exist."""
    try:
        model_class = RECOMMENDERS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; expected one of: "
                         f"{', '.join(RECOMMENDERS)}") from None
    return model_class(**params)


__all__ = ["RECOMMENDERS", "NotFittedError", "Recommender", "make_recommender"]
