"""Offline jobs that build, evaluate and register models in MLflow (built on ``features``)."""
