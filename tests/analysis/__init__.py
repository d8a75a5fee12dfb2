"""Tests of `ncinspect.analysis`: the passes, saved statistics and the device passes."""
