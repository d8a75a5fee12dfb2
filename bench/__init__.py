"""ncinspect's benchmarks, run as modules from the repository root (`python -m bench.run`, which
`make bench` calls); not part of the installed package."""
