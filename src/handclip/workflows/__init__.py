"""Whole pipelines built from the other packages: the built-in demo and the paper benchmark."""
