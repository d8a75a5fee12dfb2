"""ncinspect's tests: one subpackage per ncinspect subpackage, each file named after the module
it tests; cross-cutting checks of the whole pipeline in `end_to_end/`. Shared fixtures live in
`conftest.py`, plain helpers (paths, data generators, the naive oracles) in `helpers/`."""
