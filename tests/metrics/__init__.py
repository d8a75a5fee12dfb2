"""Tests of `ncinspect.metrics`: metrics against the naive oracles, closed forms, invariances."""
