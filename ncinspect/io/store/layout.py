"""The on-disk layout of a feature store (format version 1) and the names it uses.

Owns: the format's constants and turning root attributes into a source's `meta` (the temporary
names a store is written under belong to `io.atomic`). Imports no h5py and opens no file.

Layout of one store (one checkpoint x one data split):
    /features      (N, D) float32 (or float16/float64 on request), chunked by rows
    /labels        (N,) int64                       classification
    /targets       (N, T) float32                   regression
    /outputs       (N, K) logits or (N, T) predictions, optional
    /head/weight   (K, D) or (T, D) float32
    /head/bias     (K,) or (T,) float32, only when the head has a bias
    /class_sums    counts (K,) int64 and sums (K, D) float64 of the stored rows (classification;
                   written when every label indexes the head and the sums are finite)
    root attributes: format="ncinspect.features", format_version=1, task, split, run, checkpoint,
    checkpoint_sha256, epoch (absent when unknown), created, ncinspect_version, n, d, k or t, and
    `provenance` (a JSON object with everything else: model spec, data spec, device, ...).
    content="features" (absent in older stores: the same).

A layer store (`extract --layers`: the output of one module, pooled per sample) has the same
layout, with root attributes `layer` (the module's name) and `layer_order` (its place in the
model's forward pass). A layer that is not the head's input has no /head group; its K or T is
then the root attribute k or t, and the head-free metrics are reported for it. Layer stores of
one checkpoint and split live in `<checkpoint>.<split>.layers/<layer>.h5` beside its store.

A stats-only store (content="statistics", `extract --stats-only`) has no /features, /labels,
/targets or /outputs; instead
    /stats                 attrs: rows, nonfinite_rows_dropped, predictions (regression)
    /stats/<part>          one accumulator: attrs type (its `stats` class), scope ("global":
                           over every row of the source; "shard": over this file's rows), its
                           scalar fields, none_fields (JSON list of fields that are None)
    /stats/<part>/<field>  its array fields

A shard of a distributed extraction is named NAME.shard-RRRRR-of-PPPPP.h5 (a store of either
content) and has root attributes shard_index, shard_count, extraction_id (shared by the set),
total_rows (N of the whole set) and shard_layout ("blocks": contiguous whole batches in rank order;
"strided": every P-th batch). See `shards`.

A store is written under a new temporary name beside its final name, `.NAME.partial-RANDOM-PID`,
and renamed when complete (`io.atomic`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

FORMAT = "ncinspect.features"
FORMAT_VERSION = 1
CONTENTS = ("features", "statistics")
CLASS_SUMS = "class_sums"  # group: counts (K,) int64 and sums (K, D) float64 of the stored rows
# Attributes the store writes itself; everything else a caller passes goes to `provenance`.
CORE_ATTRS = (
    "split",
    "run",
    "checkpoint",
    "checkpoint_sha256",
    "epoch",
    "shard_index",
    "shard_count",
    "extraction_id",
    "total_rows",
    "shard_layout",
    "layer",
    "layer_order",
)


def plain(value: Any) -> Any:
    """An HDF5 attribute value as plain Python (bytes decoded, numpy scalars and arrays unboxed)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def source_meta(attrs: dict[str, Any]) -> dict[str, Any]:
    """Root attributes as a source's meta, with `provenance` parsed from its JSON."""
    meta = dict(attrs)
    prov = meta.pop("provenance", None)
    if isinstance(prov, str):
        try:
            loaded = json.loads(prov)
        except json.JSONDecodeError:
            loaded = None
        if isinstance(loaded, dict):
            meta["provenance"] = loaded
    return meta
