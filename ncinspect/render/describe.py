"""The text form of `ncinspect inspect`: `describe`'s dict as plain lines.

Owns `format_description(desc)`: one line per fact of the JSON-able dict that
`extraction.inspection.describe` returns (format, safety, tensors, head candidates, a store's
datasets and attributes, arrays, checkpoints of a directory, notes). Formats the plain dict
only: never opens a file and never imports extraction. No colours and no terminal width
assumptions, so the text is the same in a pipe and on a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ncinspect.errors import visible


def _shape(shape: Any) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _kv(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in mapping.items())


def format_description(desc: dict[str, Any]) -> str:
    """Plain text lines for `describe`'s dict (no colours, no terminal width assumptions)."""
    lines = [f"{desc['path']}"]
    add = lines.append
    fmt_line = f"  format: {desc.get('format_name', desc.get('format'))}"
    if desc.get("contents"):
        fmt_line += f" -- {desc['contents']}"
    add(fmt_line)
    if "size_bytes" in desc:
        add(f"  size: {_size(int(desc['size_bytes']))}")
    if desc.get("kind") == "checkpoint" and "loads_safely" in desc:
        safe = desc["loads_safely"]
        text = {True: "yes (weights only)", False: "no: needs --trust-code", None: "no"}[safe]
        add(f"  loads safely: {text}")
    if desc.get("unsafe_globals"):
        add(f"  pickled classes: {', '.join(desc['unsafe_globals'])}")
    if desc.get("error"):
        add(f"  error: {desc['error']}")
    if desc.get("epoch") is not None:
        add(f"  epoch: {desc['epoch']} (from {desc.get('epoch_source')})")
    if desc.get("state_key"):
        add(f"  state dict key: {desc['state_key']}")
    if desc.get("stripped_prefixes"):
        add(f"  stripped key prefixes: {', '.join(desc['stripped_prefixes'])}")
    if desc.get("labels"):
        add(f"  training labels: {_kv(desc['labels'])}")
    if desc.get("hyper_parameters"):
        add(f"  hyper_parameters: {_kv(desc['hyper_parameters'])}")
    if desc.get("metadata"):
        add(f"  metadata: {_kv(desc['metadata'])}")
    if desc.get("model_in_checkpoint"):
        add(f"  model named in the checkpoint: {_kv(desc['model_in_checkpoint'])}")
    if "tensors" in desc:
        add(f"  tensors: {desc['n_tensors']} ({desc['n_parameters']:,} values)")
        width = max((len(t["name"]) for t in desc["tensors"]), default=0)
        for t in desc["tensors"]:
            add(f"    {t['name']:<{width}}  {_shape(t['shape'])}  {t['dtype']}")
    if desc.get("head_candidates") is not None and "tensors" in desc:
        add("  head candidates (weight pairs, last first):")
        if not desc["head_candidates"]:
            add("    none (no 2-D *.weight tensor)")
        for c in desc["head_candidates"]:
            bias = f"  bias {_shape(c['bias'])}" if c.get("bias") else "  no bias"
            add(f"    {c['module']}  weight {_shape(c['weight'])}{bias}")
    if desc.get("modules"):
        add("  Linear modules (last first):")
        for m in desc["modules"]:
            shape = f"  weight {_shape(m['weight'])}" if m.get("weight") else ""
            add(f"    {m['name']}  {m['type']}{shape}")
    if desc.get("audit"):
        add("  export audit:")
        for a in desc["audit"]:
            add(f"    {a}")
    if desc.get("kind") == "store":
        add(
            f"  store: task {desc['task']}, N = {desc['n']}, D = {desc['d']}, width {desc['width']}"
        )
        add("  datasets:")
        for d in desc["datasets"]:
            add(f"    {d['name']}" + (f"  {_shape(d['shape'])}" if d.get("shape") else ""))
        add("  attributes:")
        for k, v in sorted(desc.get("attributes", {}).items()):
            add(f"    {k}: {v}")
        if desc.get("provenance"):
            add("  provenance:")
            for k, v in sorted(desc["provenance"].items()):
                add(f"    {k}: {json.dumps(v, default=str)}")
    if desc.get("store_error"):
        add(f"  not a feature store: {desc['store_error']}")
    if desc.get("arrays") is not None:
        add("  arrays:")
        for a in desc["arrays"]:
            add(f"    {a['name']}  {_shape(a['shape'])}  {a['dtype']}")
        if desc.get("kind") == "data":
            add(f"  inputs: {desc.get('inputs_key')}  labels/targets: {desc.get('labels_key')}")
    if desc.get("globals") is not None and desc.get("format") == "pickle":
        add(f"  globals: {', '.join(desc['globals']) or 'none'}")
    if desc.get("entries"):
        add("  entries:")
        for e in desc["entries"]:
            extra = _shape(e["shape"]) if e.get("shape") else (e.get("length") or "")
            add(f"    {e['name']}  {e['type']}  {extra}".rstrip())
    if desc.get("model_dir") is not None:
        add(f"  model: {_kv(desc['model_dir'])}")
        add(f"  weights: {desc.get('weights_file')}")
        if desc.get("epoch") is not None:
            add(f"  epoch: {desc['epoch']} (from {desc.get('epoch_source')})")
        if desc.get("head_candidates"):
            add("  head candidates (weights with num_labels rows):")
            for h in desc["head_candidates"]:
                bias = f"  bias {_shape(h['bias'])}" if h.get("bias") else ""
                add(f"    {h['module']}  weight {_shape(h['weight'])}{bias}")
    if desc.get("checkpoints") is not None:
        add(f"  checkpoints: {len(desc['checkpoints'])}")
        for c in desc["checkpoints"]:
            e = c.get("epoch_from_name", c.get("epoch"))
            add(f"    {c['name']}  {c['format']}" + (f"  epoch {e}" if e is not None else ""))
    if desc.get("columns") is not None:
        add(f"  columns: {', '.join(desc['columns'])}")
        add(f"  rows: {desc.get('rows')}")
    if desc.get("cifar"):
        add(f"  CIFAR batches: {', '.join(desc['cifar'])}")
    cfg = desc.get("config_file")
    if cfg:
        add(f"  config: {cfg['path']}")
        if cfg.get("error"):
            add(f"    error: {cfg['error']}")
        if cfg.get("model"):
            add(f"    model: {cfg['model']}  args: {json.dumps(cfg.get('model_args', {}))}")
        if cfg.get("labels"):
            add(f"    training labels: {_kv(cfg['labels'])}")
    for note in desc.get("notes", []):
        add(f"  note: {note}")
    # names and values come from the file: each line keeps its control characters visible
    return "\n".join(visible(line) for line in lines)


def format_layer_listing(layers: Sequence[Any]) -> str:
    """`extract --list-layers`: one line per module in forward order (its `order`, name, class,
    output shape, features per sample under --pool, and the note: head, head input, or why it
    cannot be a layer). `layers`: `extraction.layerjobs.ListedLayer` rows."""
    rows = [("order", "module", "class", "output", "D", "note")]
    for layer in layers:
        shape = "-" if layer.shape is None else _shape(list(layer.shape))
        d = "-" if layer.d is None else str(layer.d)
        rows.append((str(layer.order), layer.name, layer.kind, shape, d, layer.note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(r[i].ljust(widths[i]) for i in range(5)).rstrip() + "  " + r[5] for r in rows
    ]
    lines = [line.rstrip() for line in lines]
    lines.append(
        "(--layers takes these names, or blocks:NAME, linear, type:CLASS; the head's input is "
        "always stored as the last layer)"
    )
    return "\n".join(visible(line) for line in lines)
