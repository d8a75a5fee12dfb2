"""The README documents every metric key with its direction, and both set-up commands."""

from __future__ import annotations

from pathlib import Path

from ncinspect.metrics.keys import METRICS

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_metric_key_has_a_row_with_its_direction() -> None:
    for key, info in METRICS.items():
        rows = [line for line in README.splitlines() if line.startswith(f"| `{key}` |")]
        assert rows, key
        expected = "parameter" if info.better == "-" else info.better
        assert expected in rows[0], (key, rows[0])


def test_both_commands_documented() -> None:
    assert "make demo" in README and "make test" in README


def test_every_command_and_long_option_is_in_the_readme() -> None:
    """The README's command sections name every command and every long option (typer's view of
    the CLI, so a new option without documentation fails here)."""
    from typer.main import get_command

    from ncinspect.cli import app

    cli = get_command(app)
    missing = []
    for name, command in cli.commands.items():  # type: ignore[attr-defined]
        if f"ncinspect {name}" not in README:
            missing.append(name)
        for param in command.params:
            missing += [f"{name} {o}" for o in param.opts if o.startswith("--") and o not in README]
    assert missing == [], missing
