"""Streaming sufficient statistics: update one block of rows, merge exactly, finalize; no I/O.

Accumulators hold counts, per-class sums, scatters and second moments in float64 named fields;
merging two of them equals gathering both blocks at once (up to float64 rounding), so batch size,
worker threads and shard order cannot change an answer. Modules: `classification` (ClassSums,
ClassMoments, ScatterPlan, ClassScatter) and `regression` (RegressionMoments, RegressionCentred,
UnitProjections), the float64 reference; `decisions`, the certified fast argmax / nearest mean
behind accuracy and NC4; `blocks`, sub-blocks, thin products and error bounds; `parallel`, the
worker threads, numpy's BLAS thread count and scratch arrays; `device`, the torch mirror of the
accumulators for an extraction device (imports torch; only extraction code loads it).
Never reads files, never computes a metric (`ncinspect.metrics` does), imports nothing of
ncinspect above it. Axes: N samples, D feature dim, K classes, T regression targets.
"""
