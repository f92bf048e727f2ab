"""The recommender: a transformer backbone and head, its weights as data, serving-side scoring."""
