"""Content similarity from item text, so that items with no history can still be found.

Each item is a TF-IDF vector of its title, description and category words (scikit-learn).
A customer's profile is the weighted sum of their items' vectors; items are scored by cosine
with it. Only the vocabulary, the idf weights and the item matrix are stored, so a loaded
model can also embed a new item's text (:meth:`ContentRecommender.embed`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from training.recommenders.base import Recommender, RecommenderConfig, sparse_arrays, sparse_from


class ContentConfig(RecommenderConfig):
    max_features: int = Field(20_000, ge=10, description="Largest vocabulary kept.")
    ngram_max: int = Field(2, ge=1, le=3, description="Longest word n-gram.")
    min_df: int = Field(1, ge=1, description="Ignore words in fewer items than this.")


def item_text(item_info: pd.DataFrame) -> list[str]:
    """The text of each item: title, description and category path as words."""
    parts = [item_info.get(c, pd.Series("", index=item_info.index)).fillna("").astype(str)
             for c in ("title", "description")]
    category = item_info.get("category", pd.Series("", index=item_info.index)).fillna("")
    words = category.astype(str).str.replace("/", " ", regex=False)
    return (parts[0] + " " + parts[1] + " " + words + " " + words).tolist()


class ContentRecommender(Recommender):
    """TF-IDF content similarity; needs ``item_info`` (title, description, category) in fit."""

    name = "content"
    Config = ContentConfig
    needs_item_info = True

    def _fit(self, user_items: sp.csr_matrix, item_info: pd.DataFrame | None) -> None:
        c = self.config
        vectorizer = TfidfVectorizer(max_features=c.max_features, ngram_range=(1, c.ngram_max),
                                     min_df=c.min_df, sublinear_tf=True, dtype=np.float32)
        self.item_matrix_ = sp.csr_matrix(vectorizer.fit_transform(item_text(item_info)))
        self.vocabulary_ = np.array(vectorizer.get_feature_names_out(), dtype=str)
        self.idf_ = vectorizer.idf_.astype(np.float32)

    def embed(self, item_info: pd.DataFrame) -> sp.csr_matrix:
        """TF-IDF vectors of new items' text in this model's vocabulary."""
        self._check_fitted()
        vectorizer = TfidfVectorizer(vocabulary={w: i for i, w in enumerate(self.vocabulary_)},
                                     ngram_range=(1, self.config.ngram_max), sublinear_tf=True,
                                     dtype=np.float32)
        vectorizer.fit(["placeholder"])
        vectorizer.idf_ = self.idf_
        return sp.csr_matrix(vectorizer.transform(item_text(item_info)))

    def _score(self, userids: np.ndarray, user_items: sp.csr_matrix,
               recalculate_user: bool = False) -> np.ndarray:
        profiles = normalize(user_items @ self.item_matrix_)
        return np.asarray((profiles @ self.item_matrix_.T).todense())

    def _item_vectors(self) -> sp.csr_matrix:
        return self.item_matrix_

    def _arrays(self) -> dict[str, np.ndarray]:
        return {**sparse_arrays("items", self.item_matrix_), "vocabulary": self.vocabulary_,
                "idf": self.idf_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_matrix_ = sparse_from("items", arrays)
        self.vocabulary_ = arrays["vocabulary"]
        self.idf_ = arrays["idf"]
