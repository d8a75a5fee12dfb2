"""Tests of `ncinspect.stats`: accumulators, their merges, the certified fast paths, threads."""
