"""Reading config files safely: a JSON or YAML document, bounded in size and nesting.

Owns `read_config` (a config file's document: YAML for a `.yaml` / `.yml` name, else JSON, from a
regular file of at most CONFIG_LIMIT bytes), `read_mapping` (its top-level mapping, or why not),
`load_json` and `load_yaml` (refusing nesting deeper than MAX_NESTING before a parser recurses;
YAML through the safe loader after a pass over its events that refuses aliases and oversized
unquoted scalars) and `nesting_deeper_than` for objects already built (a checkpoint's stored
config). Never unpickles or imports anything a file names; what a config means is
`ncinspect.provenance`'s business.
"""

from __future__ import annotations

import argparse
import json
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ncinspect.errors import InputError, reading
from ncinspect.files import bounded_text

YAML_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")


def as_mapping(value: Any) -> Mapping[str, Any] | None:
    """A mapping as it is, a namespace (argparse, SimpleNamespace) as its vars, else None."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, argparse.Namespace | types.SimpleNamespace):
        return vars(value)  # only reachable when the file was fully unpickled
    return None


MAX_NESTING = 64
"""The deepest nesting of objects and arrays a config may have (JSON text, or the dicts and
lists a checkpoint stores): real configs stay under ten; deeper ones are refused before any
parser or walk recurses into them."""


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def json_depth_error(text: str) -> json.JSONDecodeError | None:
    """A JSONDecodeError when `text` nests objects/arrays deeper than MAX_NESTING (counted on
    the raw text, brackets inside strings skipped), else None. JSON parsers recurse per level:
    a deep document would end in a RecursionError rather than a parse error."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return None
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING:
                return json.JSONDecodeError(
                    f"nested deeper than {MAX_NESTING} levels", text, m.start()
                )
        elif token in ("]", "}"):
            depth -= 1
    return None


def load_json(text: str | bytes) -> Any:
    """`json.loads` that refuses nesting deeper than MAX_NESTING with a `json.JSONDecodeError`
    (so a caller's `except json.JSONDecodeError` covers it), before parsing."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    error = json_depth_error(text)
    if error is not None:
        raise error
    return json.loads(text)


def nesting_deeper_than(value: Any, limit: int = MAX_NESTING, budget: int = 1_000_000) -> bool:
    """Whether mappings, lists and tuples nest deeper than `limit` in `value` (or hold more than
    `budget` entries in all, shared ones counted each time they are reached, so that a cycle or
    an exponentially shared structure also counts as too deep). Iterative: never recurses."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        obj, depth = stack.pop()
        m = as_mapping(obj)
        children = m.values() if m is not None else obj if isinstance(obj, list | tuple) else None
        if children is None:
            continue
        if depth >= limit:
            return True
        for child in children:
            seen += 1
            if seen > budget:
                return True
            stack.append((child, depth + 1))
    return False


def read_mapping(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the mapping of a config file, None), or (None, why not: one line, without the path) when
    it cannot be read or is not a mapping (a JSON object or a YAML mapping)."""
    try:
        doc = read_config(path)
    except InputError as exc:
        return None, exc.message
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc})"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if not isinstance(doc, dict):
        return None, mapping_expected(doc)
    return doc, None


def mapping_expected(doc: Any) -> str:
    """What a config whose top level is not a mapping is told (JSON and YAML alike)."""
    found = "an empty document" if doc is None else f"a {type(doc).__name__}"
    return f"expected a mapping (a JSON object or a YAML mapping) at the top level, got {found}"


CONFIG_LIMIT = 16 << 20
"""The largest config file read (bytes): configs are read whole, real ones are kilobytes."""


MAX_PLAIN_SCALAR = 10_000
"""The longest unquoted YAML scalar read (characters): YAML 1.1 reads `1:2:3` as a base-60
number, whose cost grows with the square of its length; real configs' values are short."""


def read_config(path: Path) -> Any:
    """The document of a config file: YAML for a `.yaml` / `.yml` name (`load_yaml`), else JSON.
    A regular file of at most CONFIG_LIMIT bytes (InputError otherwise), nested at most
    MAX_NESTING deep (json.JSONDecodeError for JSON, InputError for YAML otherwise)."""
    text = bounded_text(path, CONFIG_LIMIT)
    if Path(path).suffix.lower() in YAML_SUFFIXES:
        return load_yaml(text, path)
    return load_json(text)


def load_yaml(text: str, path: str | Path) -> Any:
    """`yaml.safe_load` of a config's text after one pass over its parse events, which refuses
    an alias (a few anchors referring to each other expand into billions of entries: "billion
    laughs"), nesting deeper than MAX_NESTING and unquoted scalars longer than MAX_PLAIN_SCALAR,
    before anything is built. Every problem is one InputError naming `path`."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with reading(path, InputError, "YAML"):
        _check_yaml_events(yaml.parse(text, Loader=loader), path)
        doc = yaml.load(text, Loader=loader)
    if nesting_deeper_than(doc):
        raise InputError(
            f"nests deeper than {MAX_NESTING} levels or holds more entries than a config may",
            path=path,
        )
    return doc


def _check_yaml_events(events: Any, path: str | Path) -> None:
    import yaml

    depth = 0
    for event in events:
        if isinstance(event, yaml.AliasEvent):
            anchor = str(event.anchor)[:40]
            raise InputError(
                f"uses the YAML alias *{anchor}; aliases are refused in configs (a few can "
                "expand into billions of entries): write the values out",
                path=path,
            )
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise InputError(f"nests deeper than {MAX_NESTING} levels", path=path)
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent) and not event.style:  # plain: None, or ""
            if len(event.value) > MAX_PLAIN_SCALAR:
                raise InputError(
                    f"holds an unquoted value of {len(event.value)} characters, more than the "
                    f"{MAX_PLAIN_SCALAR} a config value may have; quote it",
                    path=path,
                )
