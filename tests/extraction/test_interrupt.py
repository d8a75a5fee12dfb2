"""Interrupted and concurrent extractions (issue #8, part 2).

SIGKILL, SIGINT and SIGTERM in the middle of a run leave no file that looks complete under a
store's name (SIGINT and SIGTERM also remove their own temporary file); re-running writes only the
missing stores. Two extractions of the same output never corrupt it:
one holds a per-store lock and the other is refused with a one-line error naming the holder.
A killed writer's `.NAME.partial-PID` file is removed by the next run.

The extraction runs in a child process on a model whose forward pass sleeps, so there is a
window to interrupt it mid-checkpoint; the tests wait on files, not on fixed delays. In the
SIGKILL, SIGINT and SIGTERM tests the child stalls in the store being written until the signal
comes, however late; the moments a signal then cannot reach (taking and giving back a store's
lock, Python dropping the interrupt in a finalizer, library code it breaks) are tested
deterministically in tests/io/test_locking.py and tests/test_errors.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ncinspect.cli import app
from ncinspect.io.locking import lock_name, store_lock
from ncinspect.io.store.reader import open_store
from tests.helpers.cli import runner

SLOW_MODEL = """\
import os
import time
from torch import nn

# In a child started with stall=N: the model of the N-th checkpoint stalls in its second batch
# (after the probe batch, once the store's temporary file exists) until a signal ends the process,
# so the extraction cannot get past that store however late the signal comes.
STALL = int(os.environ.get("SLOWMODEL_STALL", "0"))
built = 0


class Slow(nn.Module):
    def __init__(self, delay=0.02, stall=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)
        self.delay = delay
        self.stall = stall
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        time.sleep(60 if self.stall and self.calls == 2 else self.delay)
        return self.head(self.body(x))


def slow(delay=0.02):
    global built
    built += 1
    return Slow(delay, stall=built == STALL)
"""

CHECKPOINTS = 5


class Job:
    def __init__(self, root: Path) -> None:
        self.root = root
        code = root / "slowmodel.py"
        code.write_text(SLOW_MODEL)
        self.spec = f"{code}:slow"
        self.run = root / "run"
        self.run.mkdir()
        for e in range(1, CHECKPOINTS + 1):
            torch.manual_seed(e)
            body, head = nn.Sequential(nn.Linear(6, 8), nn.Tanh()), nn.Linear(8, 3)
            sd = {f"body.{k}": v for k, v in body.state_dict().items()}
            sd.update({f"head.{k}": v for k, v in head.state_dict().items()})
            torch.save(sd, self.run / f"epoch_{e}.pt")
        rng = np.random.default_rng(0)
        self.data = root / "data_test.npz"
        np.savez(self.data, x=rng.standard_normal((96, 6)).astype(np.float32), y=np.arange(96) % 3)
        self.out = root / "features"

    def store(self, e: int) -> Path:
        return self.out / "run" / f"epoch_{e}.pt.test.h5"

    def args(self) -> list[str]:
        return [
            sys.executable, "-m", "ncinspect", "extract", str(self.run), "--data", str(self.data),
            "--model", self.spec, "--out", str(self.out), "--batch-size", "8", "--quiet",
        ]  # fmt: skip

    def start(self, tag: str, stall: int = 0) -> subprocess.Popen:
        """The extraction as a child process; `stall`: the checkpoint whose store it stalls in
        (see SLOW_MODEL). Ctrl-C is at its default in the child, as in a terminal, even where
        this process was started with SIGINT ignored (a background job of a script)."""
        out = open(self.root / f"{tag}.out", "w")  # noqa: SIM115 - closed with the process
        err = open(self.root / f"{tag}.err", "w")  # noqa: SIM115
        env = {**os.environ, "SLOWMODEL_STALL": str(stall)}
        return subprocess.Popen(
            self.args(), stdout=out, stderr=err, env=env, preexec_fn=_default_sigint
        )

    def finished(self, proc: subprocess.Popen, tag: str) -> tuple[int, str, str]:
        rc = proc.wait(timeout=120)
        return rc, (self.root / f"{tag}.out").read_text(), (self.root / f"{tag}.err").read_text()

    def complete(self) -> list[int]:
        """Epochs whose store exists under its final name, each checked to open completely."""
        done = []
        for e in range(1, CHECKPOINTS + 1):
            if self.store(e).exists():
                src = open_store(self.store(e))  # raises if the file only looks complete
                assert src.n == 96
                src.close()
                done.append(e)
        return done

    def partials(self) -> list[Path]:
        run_dir = self.out / "run"
        return sorted(run_dir.glob(".*.partial-*")) if run_dir.exists() else []

    def wait_for(self, proc: subprocess.Popen, stores: int) -> None:
        """Until `stores` stores are complete and the next one is being written."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the extraction ended before it could be interrupted"
            names = [self.store(e).exists() for e in range(1, CHECKPOINTS + 1)]
            if sum(names) >= stores and self.partials():
                return
            time.sleep(0.01)
        raise AssertionError("timed out waiting for the extraction")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return Job(tmp_path)


def _mtimes(job: Job, epochs: list[int]) -> dict[int, int]:
    return {e: job.store(e).stat().st_mtime_ns for e in epochs}


def _rerun_completes_only_the_missing(job: Job, done: list[int]) -> None:
    before = _mtimes(job, done)
    res = runner.invoke(app, job.args()[3:])  # in this process: saves a torch import
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == CHECKPOINTS
    skipped = [e for e in range(1, CHECKPOINTS + 1) if "skipped" in lines[e - 1]]
    assert skipped == done, (skipped, done, res.stdout)
    assert _mtimes(job, done) == before  # complete stores were not rewritten
    assert job.complete() == list(range(1, CHECKPOINTS + 1))
    assert job.partials() == []  # the killed writer's temporary file was cleaned up
    assert list((job.out / "run").glob(".*.lock")) == []


def test_sigkill_mid_extraction_then_resume(job: Job) -> None:
    proc = job.start("first", stall=3)  # killed while store 3 is written, however late
    job.wait_for(proc, stores=2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done = job.complete()  # every file under a store's name is complete
    assert 2 <= len(done) < CHECKPOINTS and done == list(range(1, len(done) + 1))
    leftovers = job.partials()
    assert leftovers and all(p.name.endswith(f"-{proc.pid}") for p in leftovers)
    assert not job.store(len(done) + 1).exists()  # the interrupted one is not under its name
    _rerun_completes_only_the_missing(job, done)


@pytest.mark.parametrize(
    ("sig", "rc", "message"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["sigint", "sigterm"],
)
def test_sigint_or_sigterm_mid_extraction_cleans_up_then_resume(
    job: Job, sig: signal.Signals, rc: int, message: str
) -> None:
    proc = job.start("first", stall=2)  # the signal cannot come after store 2 is complete
    job.wait_for(proc, stores=1)
    proc.send_signal(sig)
    code, out, err = job.finished(proc, "first")
    assert code == rc, err
    assert err.strip().splitlines() == [f"ncinspect: error: {message}"]
    assert "Traceback" not in err
    done = job.complete()
    assert 1 <= len(done) < CHECKPOINTS
    assert job.partials() == []  # Ctrl-C and SIGTERM clean up their own temporary file
    assert list((job.out / "run").glob(".*.lock")) == []
    _rerun_completes_only_the_missing(job, done)


def test_a_held_store_lock_refuses_a_second_extraction(job: Job) -> None:
    """Deterministic: this process holds the first store's lock; the CLI is refused."""
    with store_lock(job.store(1)):
        res = subprocess.run(job.args(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines == [
        f"ncinspect: error: {job.store(1)}: another ncinspect extract (pid {os.getpid()}) is "
        "writing this store; wait for it or choose another --out"
    ]
    assert not job.store(1).exists() and job.partials() == []
    assert not lock_name(job.store(1)).exists()  # released and removed with the with-block


def test_two_extractions_at_once_do_not_corrupt(job: Job) -> None:
    a, b = job.start("a"), job.start("b")
    results = [job.finished(a, "a"), job.finished(b, "b")]
    assert any(rc == 0 for rc, _, _ in results), results
    for rc, _, err in results:
        if rc != 0:  # the loser stopped with the lock message, nothing else
            assert rc == 1 and len(err.strip().splitlines()) == 1, err
            assert "another ncinspect extract (pid" in err
    assert job.complete() == list(range(1, CHECKPOINTS + 1))
    assert job.partials() == [] and list((job.out / "run").glob(".*.lock")) == []
