"""The one pipeline: source -> pass 1 -> plan -> pass 2 -> statistics -> metrics -> Result.

`passes.analyze_source` is the entry every analysis takes (stores, dumps, in-memory arrays via
`arrays.analyze_arrays`). For each task a module runs the passes over the source's rows, plans
pass 2 from pass 1, and hands the finalized statistics to `ncinspect.metrics`:
`classification` and `regression`. `rows` reads the rows (non-finite rows refused or dropped),
`options` is the one options record, `saved` turns the statistics into records for a stats-only
store and back into metrics, and `device` runs the same passes on an extraction device with
`stats.device`'s torch accumulators. Reads data only through `io.sources.FeatureSource`; the
arithmetic lives in `stats` and `metrics`.
"""
