"""Data contracts, loading, validation, synthetic history, warehouse and feature computation.

This is the bottom layer of nextbest: it depends on nothing else in the project, and
``training`` and ``serving`` build on it.
"""
