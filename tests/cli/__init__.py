"""Tests of `ncinspect.cli`: each command through Typer's CliRunner."""
