"""Tests of `ncinspect.render`: golden tables, figures, UFM rows."""
