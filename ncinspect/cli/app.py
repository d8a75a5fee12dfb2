"""The `ncinspect` Typer app: the commands gathered, the root options, and the entry point.

Owns: the root app and its callback (`--version`), the order of the commands, `main()` (the
console script and `python -m ncinspect`) and its signal handlers: SIGTERM exits 143 and Ctrl-C
130, both after the same clean-up. Each command lives in its own module; the exit codes of
errors (1 bad input, 2 bad usage) are set by `ncinspect.cli.common.guarded`.
Never imports torch, h5py or rich: `ncinspect --help` stays instant.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Annotated, Any

import typer

from ncinspect._version import __version__
from ncinspect.cli import compare, extract, inspect, plot, report, ufm
from ncinspect.errors import Terminated, pending_interrupt, signalled

app = typer.Typer(
    name="ncinspect",
    help="Neural-collapse diagnostics for saved checkpoints and feature stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (report, compare, plot, extract, inspect):
    app.add_typer(command.app)
app.add_typer(ufm.app, name="ufm")


def _version(value: bool) -> None:
    if value:
        print(f"ncinspect {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Neural-collapse diagnostics for saved checkpoints and feature stores."""


def _terminate(signum: int, frame: Any) -> None:
    signalled(Terminated())


def _interrupt(signum: int, frame: Any) -> None:
    signalled(KeyboardInterrupt())


def _unraisable(info: Any) -> None:
    # The interrupt a handler raised inside a finalizer, which Python dropped: it is raised again
    # at the next batch or block (and sets the exit code), so "Exception ignored in ..." with its
    # traceback would only add lines to the one error line.
    if isinstance(info.exc_value, KeyboardInterrupt) and pending_interrupt() is not None:
        return
    sys.__unraisablehook__(info)


def main(argv: list[str] | None = None) -> Any:
    # SIGTERM cleans up like Ctrl-C (partial stores removed, locks released) unless the
    # embedding program installed its own handler. Both handlers also record the interrupt, so
    # that one Python drops (raised inside a weakref callback or `__del__`) is raised again at
    # the next batch or block (`errors.check_interrupt`) and still sets the exit code; the
    # "Exception ignored" report of such a drop is not printed (`_unraisable`).
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _terminate)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupt)
        if sys.unraisablehook is sys.__unraisablehook__:
            sys.unraisablehook = _unraisable
    return app(args=argv, prog_name="ncinspect")
