"""Pure functions from finalized statistics and the head to metric values; numpy and scipy only.

`classification` (NC1-NC4, accuracy, bias gap) and `regression` (NRC1-NRC3, evr, mse, r2) turn
`ncinspect.stats`' accumulators and a `head.Head` into a `results.MetricSet`: values by
canonical key, NaN with a reason when undefined, warnings. `keys` is the one catalogue of metric
keys, table headers and directions: every NC / NRC score is lower-is-more-collapsed, mse and
bias_gap lower-is-better, accuracy, evr and r2 higher-is-better, nrc3_gamma and its ratio are
parameters. `results` holds the record every analysis returns. Definitions, edge cases and
references: docs/metrics.md. Never reads rows, files or options (`ncinspect.analysis` gathers
the statistics). Axes: N samples, D feature dim, K classes, T regression targets.
"""
