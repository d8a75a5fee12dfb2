"""Plain helpers the tests share: paths, seeded data generators, the independent naive oracles,
a tiny model file, the command line run in process. Fixtures live in `tests/conftest.py`."""
