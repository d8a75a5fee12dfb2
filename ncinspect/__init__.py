"""ncinspect: post-hoc neural-collapse diagnostics for saved checkpoints and feature stores.

This module must stay light: importing it (and so `ncinspect --help`) never imports torch,
h5py or rich. The Python API is re-exported lazily.
"""

from __future__ import annotations

from typing import Any

from ncinspect._version import __version__

__all__ = ["__version__", "analyze"]


def __getattr__(name: str) -> Any:
    if name == "analyze":
        from ncinspect.api import analyze

        return analyze
    raise AttributeError(f"module 'ncinspect' has no attribute {name!r}")
