"""Tests of `ncinspect.ufm`: closed forms, the solver, reports, inputs, the distance."""
