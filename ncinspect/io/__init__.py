"""Feature files in and out: the only code that opens feature files.

`sniff` tells formats apart from a file's first bytes (the one sniffer, also asked by the
extraction); `store` reads and writes the HDF5 feature store (rows, saved statistics, shard sets;
h5py lives there); `dumps` reads foreign .npz/.pt/.safetensors dumps; `discovery` turns paths
and directories into sources; `locking` keeps one writer per output store; `atomic` creates
every output under a private temporary name (never through a planted link) and renames it;
`sources` is what every reader hands the statistics (`FeatureSource`, `Batch`, saved
`StatRecord`s); `npzheaders` reads .npy headers without loading arrays. Never computes metrics
and never runs a model; the one statistic computed here is the per-class row sums a
classification store saves beside its rows.
"""
