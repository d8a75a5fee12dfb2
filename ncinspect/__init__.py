"""ncinspect: post-hoc neural-collapse diagnostics for saved checkpoints and feature stores.

The Python API (`ncinspect.api`) is exported here lazily: `import ncinspect` (and so
`ncinspect --help`) never imports torch, h5py or rich; the first use of a name below does.

    >>> import ncinspect
    >>> results = ncinspect.analyze(["features/"])      # list[Result]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ncinspect._version import __version__

if TYPE_CHECKING:
    from ncinspect.api import (
        AnalysisOptions,
        NcInspectError,
        Result,
        UfmSettings,
        analyze,
        analyze_arrays,
    )

__all__ = [
    "AnalysisOptions",
    "NcInspectError",
    "Result",
    "UfmSettings",
    "__version__",
    "analyze",
    "analyze_arrays",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ncinspect import api

        return getattr(api, name)
    raise AttributeError(f"module 'ncinspect' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
