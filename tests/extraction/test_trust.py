"""The trust boundary (`extraction.trust`): importing a user's `module:factory` and the errors
that name what went wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from ncinspect.errors import ModelError
from ncinspect.extraction.trust import import_object
from tests.helpers.models import write_model_file


def test_import_object_errors(tmp_path: Path, clean_imports: None) -> None:
    path = write_model_file(tmp_path / "code")
    factory = import_object(f"{path}:tiny", what="--model")
    assert isinstance(factory(), nn.Module)
    with pytest.raises(ModelError, match="no attribute 'nope'.*tiny"):
        import_object(f"{path}:nope", what="--model")
    with pytest.raises(ModelError, match="no such file"):
        import_object(f"{tmp_path / 'missing.py'}:f", what="--model")
    with pytest.raises(ModelError, match="cannot import module 'no_such_pkg_xyz.mod'"):
        import_object("no_such_pkg_xyz.mod:f", what="--model")
    with pytest.raises(ModelError, match="is not 'package.module:factory'"):
        import_object("justaname", what="--model")
    broken = tmp_path / "code" / "broken_mod.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ModelError, match="RuntimeError: boom at import"):
        import_object(f"{broken}:f", what="--model")
