"""Provenance (`ncinspect.provenance`): run labels read from config files, under their aliases."""

from __future__ import annotations

from ncinspect.provenance import labels_from_config


def test_labels_from_config_aliases() -> None:
    assert labels_from_config({"criterion": "ce", "ls": "0.2", "weight_decay": 1e-4}) == {
        "loss": "ce",
        "label_smoothing": 0.2,
        "weight_decay": 1e-4,
    }
    nested = {"optim": {"wd": 5e-4, "lr": 0.1}, "loss": {"name": "ce", "smoothing": 0.1}}
    assert labels_from_config(nested) == {
        "loss": "ce",
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
    }
    # the shallowest occurrence wins; non-numbers are not a smoothing value; scalars kept
    doc = {"alpha": 0.3, "sub": {"alpha": 0.9}, "smoothing": "on", "model": {"x": 1}, "bs": 64}
    assert labels_from_config(doc) == {"label_smoothing": 0.3, "bs": 64}
