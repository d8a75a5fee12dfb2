"""The HDF5 feature store: the only code that opens feature stores, and the package that owns h5py
(the extraction opens HDF5 *data* files itself, for reading inputs).

Modules: `layout` (the on-disk format, version 1, and its constants), `writer` (atomic writing),
`reader` (lazy chunked reading as a `FeatureSource`), `statistics` (stats-only stores: saved
statistics instead of rows), `shards` (the files of a distributed extraction, named, found and
read as one source) and `checks` (refusing crafted or truncated datasets before reading them).
Never touches models, and computes nothing but the per-class row sums a classification store
saves beside its rows: saved statistics arrive and leave as plain `StatRecord`s.
"""
