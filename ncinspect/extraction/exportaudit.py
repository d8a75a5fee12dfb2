"""torch.export archives (.pt2): the layout ncinspect accepts and the audit that decides whether
`torch.export.load` may read one without `--trust-code`.

Owns `audit_exported_program(path)` (the reasons the archive is refused; [] when it may be
loaded), `export_archive` (the checked layout: container, member names, programs) and
`payload_entries` (a program's weights or constants, each tensor's size, stride and offset
checked against the bytes its payload stores), shared with `exported.read_export_weights`.

The audit mirrors what torch 2.13's `torch.export.load` reads (`torch/export/__init__.py`
`load`, `torch/export/pt2_archive/_package.py` `load_pt2`, `torch/_export/serde/serialize.py`):
every program (`models/*.json`, not only "model"), each one's weights and constants configs and
payloads, and its sample inputs; and it allows only what `torch.export.save` of a plain
`nn.Module` writes. Allowlists, never denylists:
* the container: every member stored (not compressed, not encrypted, no ZIP64), the central
  directory ending the file with no comment, names unique (also ignoring case: torch's zip reader
  looks names up case-insensitively) and normalized, all under one root folder; so torch's reader
  and Python's zipfile see the same members, and torch's legacy fallback (which unpickles with
  weights_only=False) finds no top-level `version` and stops;
* the members: `_FIXED_MEMBERS` and `_MEMBER_PATTERNS`; legacy `.pt` weights, AOTInductor code,
  extra files and anything else are refused;
* payloads: raw tensors only (`use_pickle` payloads and custom-object/opaque constants are
  unpickled by torch with weights_only=False), dtypes of `DTYPES_BY_CODE`, strided layout, and
  no tensor larger than the bytes stored for it (stride-0 bombs);
* the sample inputs, which every save writes as a pickle and torch loads with weights_only=True
  and, if that fails, with weights_only=False: they must load here with weights_only=True
  exactly as torch calls it, and a static scan must find no global beyond the tensor allowlist;
* the graphs: each program's JSON goes to `exportgraph.audit_program_json`, which owns the
  operator, argument, name and shape-expression allowlists.

Never imports, unpickles or runs anything the file names and never writes files; the only
loading is `torch.load(weights_only=True)` of the sample inputs.
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ncinspect.errors import CheckpointError, reading
from ncinspect.extraction.exportgraph import audit_program_json, fqn_ok
from ncinspect.extraction.messages import hint

DTYPES_BY_CODE: dict[int, tuple[str, int]] = {
    1: ("uint8", 1),
    2: ("int8", 1),
    3: ("int16", 2),
    4: ("int32", 4),
    5: ("int64", 8),
    6: ("float16", 2),
    7: ("float32", 4),
    8: ("float64", 8),
    10: ("complex64", 8),
    11: ("complex128", 16),
    12: ("bool", 1),
    13: ("bfloat16", 2),
    28: ("uint16", 2),
    34: ("uint32", 4),
    35: ("uint64", 8),
}
_STRIDED = 7  # torch._export.serde.schema.Layout.Strided
_JSON_LIMIT = 256 << 20  # a config or graph larger than this is refused before it is read
_PICKLE_LIMIT = 256 << 20  # the sample inputs likewise
_MAX_DIM = 1 << 48

# Members torch.export.save writes, relative to the archive's root folder.
_FIXED_MEMBERS = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
_NAME = r"[A-Za-z0-9_]+"
_MEMBER_PATTERNS: dict[str, re.Pattern[str]] = {
    "program": re.compile(rf"models/(?P<m>{_NAME})\.json"),
    "sample_inputs": re.compile(rf"data/sample_inputs/(?P<m>{_NAME})\.pt"),
    "weights_config": re.compile(rf"data/weights/(?P<m>{_NAME})_weights_config\.json"),
    "constants_config": re.compile(rf"data/constants/(?P<m>{_NAME})_constants_config\.json"),
    "weight": re.compile(r"data/weights/weight_\d+"),
    "constant": re.compile(r"data/constants/tensor_\d+"),
}
# Members torch would read that ncinspect refuses, and why.
_REFUSED_MEMBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"data/constants/(opaque_obj|custom_obj)_.*"),
        "a stored Python object, which torch.export.load unpickles",
    ),
    (
        re.compile(r"data/(weights|constants)/[^/]+\.pt"),
        "legacy pickled weights, which torch.export.load unpickles with weights_only=False",
    ),
    (re.compile(r"data/aotinductor/.*"), "compiled AOTInductor code"),
    (re.compile(r"(extra|data/executorch|data/mtia|xl_model_weights)/.*"), "extra files"),
)
_KIND_DIRS = {"weights": ("data/weights/", "weight_"), "constants": ("data/constants/", "tensor_")}


@dataclass(frozen=True)
class ExportArchive:
    """A checked archive: its root folder ("name/"), members (full name -> ZipInfo) and programs
    (sorted; "model" is the one torch.export.load returns)."""

    prefix: str
    members: dict[str, zipfile.ZipInfo]
    programs: list[str]
    model: str = "model"

    def info(self, rel: str) -> zipfile.ZipInfo | None:
        return self.members.get(self.prefix + rel)


@dataclass(frozen=True)
class PayloadEntry:
    """One weight or constant of a payload config, its meta checked against the stored bytes."""

    fqn: str
    member: str  # full member name of its payload
    pickled: bool
    dtype: str | None  # torch dtype name; None for a pickled payload
    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int


def refusal(p: Path, problems: list[str]) -> CheckpointError:
    """The one-line error for an archive the audit refuses."""
    shown = "; ".join(problems[:3]) + (
        f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    )
    return CheckpointError(
        f"running this exported program could run code from the file: {shown}; pass --model SPEC "
        f"to use only its weights, or --trust-code if you trust its source; {hint(p)}",
        path=p,
    )


# ---------------------------------------------------------------------------------------------
# The container and the layout


def _bad(p: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"is not a torch.export archive ncinspect reads: {what}; save it again with "
        f"torch.export.save, or pass --trust-code if you trust its source; {hint(p)}",
        path=p,
    )


def _check_container(p: Path, zf: zipfile.ZipFile) -> None:
    """The end records close the file (no comment, nothing appended), the central directory
    sits right before them (nothing prepended, which Python's zipfile would forgive and torch's
    miniz reader would not), the ZIP64 end record (torch writes one) agrees with the classic one,
    the entry count agrees with the directory, and every member is stored plainly."""
    with open(p, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 98))
        tail = fh.read()
    if len(tail) < 22:
        raise _bad(p, "the file is too short")
    sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment = struct.unpack(
        "<4s4H2LH", tail[-22:]
    )
    if sig != b"PK\x05\x06" or comment or disk or cd_disk or n_disk != n_total:
        raise _bad(p, "its zip directory does not end the file (a comment, or data appended)")
    end = size - 22
    if len(tail) == 98 and tail[-42:-38] == b"PK\x06\x07":  # a ZIP64 end locator
        _, _, z_offset, _ = struct.unpack("<4sLQL", tail[-42:-22])
        rec = struct.unpack("<4sQ2H2L4Q", tail[:56])
        z_sig, z_len, _, _, z_disk, z_cd_disk, z_n_disk, z_n_total, z_cd_size, z_cd_offset = rec
        end = size - 98
        if z_sig != b"PK\x06\x06" or z_len != 44 or z_offset != end or z_disk or z_cd_disk:
            raise _bad(p, "its ZIP64 end record is not where its locator says")
        for short, long, sentinel in (
            (n_total, z_n_total, 0xFFFF),
            (n_disk, z_n_disk, 0xFFFF),
            (cd_size, z_cd_size, 0xFFFFFFFF),
            (cd_offset, z_cd_offset, 0xFFFFFFFF),
        ):
            if short not in (long, sentinel):
                raise _bad(p, "its ZIP64 and classic end records disagree")
        n_total, cd_size, cd_offset = z_n_total, z_cd_size, z_cd_offset
    if cd_offset + cd_size != end:
        raise _bad(p, "its zip directory is not where the end record says")
    infos = zf.infolist()
    if len(infos) != n_total:
        raise _bad(p, f"its zip directory lists {len(infos)} members, its end record {n_total}")
    for info in infos:
        if info.flag_bits & 0x41:
            raise _bad(p, f"member {info.filename!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _bad(p, f"member {info.filename!r} is compressed (torch.export.save stores)")


def _check_name(p: Path, info: zipfile.ZipInfo) -> None:
    name = info.orig_filename
    parts = name.split("/")
    if (
        name != info.filename
        or not re.fullmatch(r"[A-Za-z0-9_./-]+", name)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise _bad(p, f"member name {name!r} is not a plain relative path")


def export_archive(zf: zipfile.ZipFile, p: Path) -> ExportArchive:
    """The archive's checked layout (CheckpointError naming what is wrong): a plain zip whose
    members are all torch.export.save members of its programs, each program complete."""
    _check_container(p, zf)
    infos = zf.infolist()
    if not infos:
        raise _bad(p, "it is empty")
    members: dict[str, zipfile.ZipInfo] = {}
    folded: set[str] = set()
    for info in infos:
        _check_name(p, info)
        if info.filename in members or info.filename.lower() in folded:
            raise _bad(p, f"member {info.filename!r} is stored twice")
        members[info.filename] = info
        folded.add(info.filename.lower())
    root = infos[0].filename.split("/", 1)[0]  # torch's reader takes the first member's folder
    prefix = root + "/"
    found: dict[str, set[str]] = {kind: set() for kind in _MEMBER_PATTERNS}
    for name in members:
        if not name.startswith(prefix) or name == prefix:
            raise _bad(p, f"member {name!r} is outside the archive's folder {root!r}")
        rel = name[len(prefix) :]
        if rel in _FIXED_MEMBERS:
            continue
        for kind, pattern in _MEMBER_PATTERNS.items():
            m = pattern.fullmatch(rel)
            if m is not None:
                found[kind].add(m.groupdict().get("m") or rel)
                break
        else:
            why = next((w for pat, w in _REFUSED_MEMBERS if pat.fullmatch(rel)), None)
            what = why or "not a member torch.export.save writes for a plain module"
            raise _bad(p, f"it holds {rel!r}, {what}")
    for fixed in ("archive_format", "archive_version"):
        if prefix + fixed not in members:
            raise _bad(p, f"it has no {fixed!r}")
    fmt = members[prefix + "archive_format"]
    if fmt.file_size != 3 or zf.read(fmt) != b"pt2":
        raise _bad(p, "its archive_format is not 'pt2'")
    programs = sorted(found["program"])
    if "model" not in programs:
        raise _bad(p, "it holds no program named 'model'")
    for kind in ("sample_inputs", "weights_config", "constants_config"):
        if found[kind] != set(programs):
            odd = sorted(found[kind] ^ set(programs))
            raise _bad(p, f"the programs and their {kind.replace('_', ' ')} differ ({odd[0]!r})")
    return ExportArchive(prefix, members, programs)


def read_member(zf: zipfile.ZipFile, arc: ExportArchive, rel: str, limit: int) -> bytes:
    """A member's bytes, its size checked in the zip directory before anything is read."""
    info = arc.info(rel)
    if info is None:
        raise KeyError(rel)
    if info.file_size > limit:
        raise CheckpointError(
            f"member {rel!r} claims {info.file_size:,} bytes, more than ncinspect reads "
            f"({limit:,}); {hint(Path(zf.filename or ''))}",
            path=zf.filename,
        )
    return zf.read(info)


def _json(zf: zipfile.ZipFile, arc: ExportArchive, rel: str) -> Any:
    return json.loads(read_member(zf, arc, rel, _JSON_LIMIT))


def _int(value: Any, what: str) -> int:
    if not isinstance(value, dict) or set(value) != {"as_int"}:
        raise ValueError(f"{what} is not a plain integer")
    v = value["as_int"]
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _MAX_DIM:
        raise ValueError(f"{what} {v!r} is out of range")
    return v


def payload_entries(
    zf: zipfile.ZipFile, arc: ExportArchive, model: str, kind: str
) -> Iterator[PayloadEntry]:
    """The weights or constants of a program. Raises ValueError naming the first entry that is
    not a raw strided tensor fitting in the bytes its payload stores (pickled entries are
    yielded with `pickled=True`; the audit refuses them, the weight reader loads them
    weights_only)."""
    directory, stem = _KIND_DIRS[kind]
    doc = _json(zf, arc, f"{directory}{model}_{kind}_config.json")
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"the {kind} config of program {model!r} is not a mapping")
    dtype_of: dict[str, int] = {}
    for fqn, meta in config.items():
        if not fqn_ok(fqn):
            raise ValueError(f"{kind[:-1]} name {fqn[:60]!r} is not a dotted identifier")
        path_name = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(path_name, str) or not re.fullmatch(rf"{stem}\d+", path_name):
            raise ValueError(
                f"{kind[:-1]} {fqn!r} is stored as {str(path_name)[:40]!r}, a pickled Python "
                "object (torch.export.load unpickles it with weights_only=False)"
            )
        member = f"{arc.prefix}{directory}{path_name}"
        info = arc.members.get(member)
        if info is None:
            raise ValueError(f"{kind[:-1]} {fqn!r}: its payload {path_name!r} is missing")
        if meta.get("use_pickle") is not False:
            yield PayloadEntry(fqn, member, True, None, (), (), 0)
            continue
        tm = meta.get("tensor_meta")
        if not isinstance(tm, dict):
            raise ValueError(f"{kind[:-1]} {fqn!r} has no tensor meta")
        code = tm.get("dtype")
        if code not in DTYPES_BY_CODE or isinstance(code, bool):
            raise ValueError(f"{kind[:-1]} {fqn!r} has dtype code {code!r}, not a plain dtype")
        if tm.get("layout") != _STRIDED:
            raise ValueError(f"{kind[:-1]} {fqn!r} is not a strided tensor")
        device = tm.get("device")
        if not isinstance(device, dict) or device.get("type") not in ("cpu", "cuda"):
            raise ValueError(f"{kind[:-1]} {fqn!r} is on device {device!r}")
        if dtype_of.setdefault(path_name, code) != code:
            raise ValueError(f"{kind[:-1]} {fqn!r} reads payload {path_name!r} as another dtype")
        sizes = tuple(_int(s, f"{fqn!r} size") for s in tm.get("sizes") or [])
        strides = tuple(_int(s, f"{fqn!r} stride") for s in tm.get("strides") or [])
        offset = _int(tm.get("storage_offset"), f"{fqn!r} storage offset")
        if len(sizes) != len(strides) or len(tm.get("sizes") or []) > 64:
            raise ValueError(f"{kind[:-1]} {fqn!r} has {len(sizes)} sizes, {len(strides)} strides")
        name, itemsize = DTYPES_BY_CODE[code]
        numel = 1
        for s in sizes:
            numel *= s
        stored = info.file_size
        last = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True))
        if stored % itemsize or (
            numel and ((last + 1) * itemsize > stored or numel * itemsize > stored)
        ):
            raise ValueError(
                f"{kind[:-1]} {fqn!r} claims {numel:,} values of {name} (sizes {list(sizes)}, "
                f"strides {list(strides)}, offset {offset}), more than the {stored:,} bytes "
                f"stored in {path_name!r}"
            )
        yield PayloadEntry(fqn, member, False, name, sizes, strides, offset)


# ---------------------------------------------------------------------------------------------
# The audit


def audit_exported_program(path: str | Path) -> list[str]:
    """Reasons why `torch.export.load` of this archive could run code from it or exhaust memory;
    [] when every program, member, payload and operator is on the allowlists. A damaged or
    foreign archive raises CheckpointError (naming `--trust-code`)."""
    p = Path(path)
    with reading(p, CheckpointError, "a torch.export program"):
        with zipfile.ZipFile(p) as zf:
            arc = export_archive(zf, p)
            problems: list[str] = []
            referenced: set[str] = set()
            for model in arc.programs:
                for kind in ("weights", "constants"):
                    try:
                        for entry in payload_entries(zf, arc, model, kind):
                            referenced.add(entry.member)
                            if entry.pickled:
                                problems.append(
                                    f"{kind[:-1]} {entry.fqn!r} of program {model!r} is a "
                                    "pickle, which torch.export.load unpickles with "
                                    "weights_only=False"
                                )
                    except ValueError as exc:
                        problems.append(f"program {model!r}: {exc}")
                problems += _audit_sample_inputs(zf, arc, model)
                doc = _json(zf, arc, f"models/{model}.json")
                problems += [f"program {model!r}: {x}" for x in audit_program_json(doc)]
            payloads = (_MEMBER_PATTERNS["weight"], _MEMBER_PATTERNS["constant"])
            for name in arc.members if not problems else ():
                rel = name[len(arc.prefix) :]
                if any(pat.fullmatch(rel) for pat in payloads) and name not in referenced:
                    problems.append(f"payload {rel!r} belongs to no weight or constant")
    return sorted(set(problems))


def _audit_sample_inputs(zf: zipfile.ZipFile, arc: ExportArchive, model: str) -> list[str]:
    """torch loads the sample inputs with weights_only=True and, if that raises, with
    weights_only=False: they must load here exactly as torch calls it."""
    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint

    rel = f"data/sample_inputs/{model}.pt"
    raw = read_member(zf, arc, rel, _PICKLE_LIMIT)
    if not raw:
        return []
    where = f"the sample inputs of program {model!r}"
    unsafe = get_unsafe_globals_in_checkpoint(io.BytesIO(raw))
    if unsafe:
        return [f"{where} pickle {', '.join(unsafe[:4])}"]
    try:
        obj = torch.load(io.BytesIO(raw), weights_only=True)  # as serde.deserialize_torch_artifact
    except Exception as exc:  # noqa: BLE001 - torch would then unpickle with weights_only=False
        return [
            f"{where} do not load with weights_only=True ({type(exc).__name__}), so "
            "torch.export.load would unpickle them with weights_only=False"
        ]
    if not isinstance(obj, tuple | dict):
        return [f"{where} are a {type(obj).__name__}, not a tuple"]
    return []
