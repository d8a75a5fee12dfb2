"""Checks of the whole pipeline through the command line: bad inputs, outputs, determinism."""
