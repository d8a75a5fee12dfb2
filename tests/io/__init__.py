"""Tests of `ncinspect.io`: stores, dumps, sources, locking, and fuzzing of every reader."""
