"""The package version: a leaf, so any layer may read it without importing the rest."""

__version__ = "0.1.0"
