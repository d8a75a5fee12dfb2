"""Tests of `ncinspect.extraction`: checkpoints, models, data, the forward loop, `run_extract`."""
