"""`compare --by layer` (`ncinspect.depthcompare`): two runs layer by layer where their final
layers reach equal NC1, checked against answers known by construction: on results, the
interpolation between the checkpoints around the crossing written out in the test; on stores
whose within-class noise is scaled per layer and per epoch, where every layer's NC1 at a matched
final-layer level L is L q^(2(l - l_final)) whatever the epochs. Then the notes, the errors and
the output formats."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ncinspect.depthcompare import compare_layers, layer_comparison_json, layer_runs
from ncinspect.errors import InputError, UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.metrics.results import Result
from tests.helpers.cli import cli
from tests.helpers.oracle_nc import classification_oracle
from tests.helpers.results import layer_result

# (name, layer_order), model order != name order; the last feeds the head
LAYERS = (("stem", 2), ("body.10", 5), ("body.9", 11), ("fc:input", 20))
NAMES = [name for name, _ in LAYERS]
FINAL = "fc:input"


# ---------------------------------------------------------------------------------------------
# on results: the interpolation written out


_result = layer_result


def _run(name: str, final_nc1: dict[int, float], layers=LAYERS, skip=()) -> list[Result]:
    """A run whose final layer's nc1 at each epoch is `final_nc1[epoch]`; layer r's nc1 is that
    times 2^(3 - r) and its nc2_etf_means 0.1 r + epoch / 1000 (linear in epoch). `skip`:
    (epoch, layer) pairs without a store."""
    out = []
    for epoch, nc1 in final_nc1.items():
        for rank, (layer, order) in enumerate(layers):
            if (epoch, layer) in skip:
                continue
            metrics = {
                "nc1": nc1 * 2.0 ** (len(layers) - 1 - rank),
                "nc2_etf_means": 0.1 * rank + epoch / 1000,
                "nc1_cdnv": 1.0 / (rank + 1 + epoch),
            }
            out.append(_result(name, epoch, layer, order, metrics))
    return out


def _pair(a: list[Result], b: list[Result]):
    ra, rb = layer_runs(a), layer_runs(b)
    assert len(ra) == len(rb) == 1
    return ra[0], rb[0]


def test_values_between_the_checkpoints_around_the_first_crossing() -> None:
    # a: 1 -> 0.1 -> 0.2 -> 0.01 (crosses 0.15 first between epochs 10 and 20, not later)
    a, b = _pair(
        _run("a", {10: 1.0, 20: 0.1, 30: 0.2, 40: 0.01}),
        _run("b", {5: 0.5, 50: 0.05}),
    )
    level = 0.15
    c = compare_layers(a, b, "nc1", ["nc1", "nc2_etf_means", "nc1_cdnv"], [level])
    assert c.layers == NAMES and c.only_a == c.only_b == [] and c.notes == []
    (m,) = c.levels
    for side, (e0, v0), (e1, v1) in (("a", (10, 1.0), (20, 0.1)), ("b", (5, 0.5), (50, 0.05))):
        t = math.log(level / v0) / math.log(v1 / v0)
        match = getattr(m, side)
        assert (match.start, match.end) == (f"epoch_{e0}.pt", f"epoch_{e1}.pt")
        assert match.t == pytest.approx(t, rel=1e-12)
        assert match.epoch == pytest.approx(e0 + t * (e1 - e0), rel=1e-12)
        for rank, layer in enumerate(NAMES):
            up = 2.0 ** (3 - rank)
            # nc1 (the matched metric) geometric: the final layer reads the level exactly
            nc1 = math.exp(math.log(v0 * up) + t * (math.log(v1 * up) - math.log(v0 * up)))
            assert m.value(side, layer, "nc1") == pytest.approx(nc1, rel=1e-12)
            assert m.value(side, layer, "nc1") == pytest.approx(level * up, rel=1e-12)
            etf0, etf1 = 0.1 * rank + e0 / 1000, 0.1 * rank + e1 / 1000
            etf = etf0 + t * (etf1 - etf0)  # linear in epoch
            assert m.value(side, layer, "nc2_etf_means") == pytest.approx(etf, rel=1e-12)
            cd0, cd1 = 1.0 / (rank + 1 + e0), 1.0 / (rank + 1 + e1)
            assert m.value(side, layer, "nc1_cdnv") == pytest.approx(cd0 + t * (cd1 - cd0))
    for layer in NAMES:
        for key in c.metrics:
            assert m.diff(layer, key) == pytest.approx(
                m.value("b", layer, key) - m.value("a", layer, key), abs=1e-15
            )
    assert c.first_epoch_reaching == {"a": {level: 20}, "b": {level: 50}}


def test_a_checkpoint_at_the_level_is_read_exactly_and_nothing_is_extrapolated() -> None:
    a, b = _pair(_run("a", {10: 1.0, 20: 0.25, 30: 0.1}), _run("b", {10: 1.0, 20: 0.5}))
    c = compare_layers(a, b, "nc1", ["nc2_etf_means"], [0.25])
    (m,) = c.levels
    assert (m.a.start, m.a.end, m.a.t, m.a.epoch) == ("epoch_20.pt", "epoch_20.pt", 0.0, 20)
    assert [m.value("a", layer, "nc2_etf_means") for layer in NAMES] == [
        0.1 * r + 0.02 for r in range(4)
    ]
    assert m.b is None  # b never gets below 0.5
    assert all(m.value("b", layer, "nc2_etf_means") is None for layer in NAMES)
    assert all(m.diff(layer, "nc2_etf_means") is None for layer in NAMES)
    assert c.first_epoch_reaching["b"] == {0.25: None}


def test_a_layer_missing_at_a_checkpoint_has_no_value_there() -> None:
    a, b = _pair(
        _run("a", {10: 1.0, 20: 0.1}, skip={(20, "body.9")}), _run("b", {10: 1.0, 20: 0.1})
    )
    c = compare_layers(a, b, "nc1", ["nc1"], [0.5])
    (m,) = c.levels
    assert m.value("a", "body.9", "nc1") is None and m.value("b", "body.9", "nc1") is not None
    assert m.value("a", "stem", "nc1") == pytest.approx(0.5 * 8, rel=1e-12)


def test_default_levels_and_metrics() -> None:
    a, b = _pair(_run("a", {10: 1.0, 20: 0.01}), _run("b", {10: 0.1, 20: 0.001}))
    c = compare_layers(a, b)
    assert c.metrics == ["nc1", "nc2_etf_means"]
    # 5 log-spaced levels strictly inside the overlap [0.01, 0.1], in training order
    expected = list(np.geomspace(0.01, 0.1, 7)[1:-1][::-1])
    assert [m.level for m in c.levels] == pytest.approx(expected, rel=1e-12)


def test_layers_of_one_run_only_are_named_in_a_note() -> None:
    extra = (("embed", 1), *LAYERS)
    a, b = _pair(_run("a", {10: 1.0, 20: 0.1}), _run("b", {10: 1.0, 20: 0.1}, layers=extra))
    c = compare_layers(a, b, levels=[0.5])
    assert c.layers == NAMES and c.only_b == ["embed"] and c.only_a == []
    assert c.notes == ["layer(s) only in b, not compared: embed"]
    doc = layer_comparison_json(c)
    assert doc["only_in_b"] == ["embed"] and doc["notes"] == c.notes
    assert list(doc["levels"][0]["a"]["layers"]) == NAMES


def test_refusals() -> None:
    other = tuple((f"x{i}", order) for i, (_, order) in enumerate(LAYERS))
    a, b = _pair(_run("a", {10: 1.0, 20: 0.1}), _run("b", {10: 1.0, 20: 0.1}, layers=other))
    with pytest.raises(UsageError) as err:
        compare_layers(a, b, levels=[0.5])
    assert err.value.message == (
        "runs a and b have no layer in common: a has stem, body.10, body.9, fc:input; "
        "b has x0, x1, x2, x3"
    )
    a, b = _pair(_run("a", {10: 1.0, 20: 0.1}), _run("b", {10: 0.01, 20: 0.001}))
    with pytest.raises(InputError, match=r"do not overlap in nc1: .* \(at their final layer "):
        compare_layers(a, b)
    with pytest.raises(UsageError, match="unknown key"):
        compare_layers(a, b, metrics=["bogus"], levels=[0.5])
    with pytest.raises(UsageError, match="nrc1 not classification key"):
        compare_layers(a, b, metrics=["nrc1"], levels=[0.5])
    with pytest.raises(UsageError, match="--at nrc1 is not a classification metric"):
        compare_layers(a, b, at="nrc1", levels=[0.5])
    with pytest.raises(UsageError, match="positive and finite"):
        compare_layers(a, b, levels=[0.0])


# ---------------------------------------------------------------------------------------------
# on stores: NC1 known by construction

K, D, PER_CLASS = 4, 6, 8


def _base() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means (small integers), labels and within-class noise in eighths with exactly zero
    mean in every class: every power-of-two scaling is exact in float32."""
    rng = np.random.default_rng(11)
    means = rng.integers(-6, 7, size=(K, D)).astype(np.float64)
    half = rng.integers(-8, 9, size=(K, PER_CLASS // 2, D)) / 8.0
    noise = np.concatenate([half, -half], axis=1).reshape(K * PER_CLASS, D)
    return means, np.repeat(np.arange(K), PER_CLASS), noise


def _write_run(
    folder: Path,
    run: str,
    q: float,
    scales: dict[int, float],
    first: tuple[str, ...] = (),
    prefix: str = "",
) -> None:
    """Layer r of LAYERS at epoch e: the class means plus the noise times s_e q^r, so its nc1
    is B s_e^2 q^(2r) (B: the nc1 of means + noise); the last layer has the head. `first`:
    layers before them (orders 0, -1, ...), whose noise is not scaled by depth; `prefix` goes
    before every layer's name."""
    means, y, noise = _base()
    layers = [(name, -i, 0) for i, name in enumerate(first)]
    layers += [(prefix + name, order, rank) for rank, (name, order) in enumerate(LAYERS)]
    for epoch, s in scales.items():
        attrs = {"run": run, "epoch": epoch, "split": "train"}
        attrs["checkpoint"] = f"/ckpt/{run}/epoch_{epoch:03d}.pt"
        for layer, order, rank in layers:
            write_store(
                folder / f"epoch_{epoch:03d}.pt.train.layers" / f"{layer}.h5",
                features=means[y] + noise * s * q**rank,
                weight=means if layer == prefix + FINAL else None,
                labels=y,
                width=K,
                attrs={**attrs, "layer": layer, "layer_order": order},
            )


QA, QB = 0.5, 0.25
# final-layer nc1 = B s^2 q^6: a spans B/64 .. B/1024, b the same range at other epochs
SCALES_A = {10: 1.0, 20: 0.5, 40: 0.25}
SCALES_B = {5: 8.0, 50: 4.0, 500: 2.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("depthcompare")
    _write_run(root / "a", "a", QA, SCALES_A)
    _write_run(root / "b", "b", QB, SCALES_B, first=("embed",))  # a layer a lacks
    _write_run(root / "c", "c", QA, SCALES_A, prefix="x.")  # no layer in common with a
    return root


def _base_nc1() -> float:
    means, y, noise = _base()
    return classification_oracle(means[y] + noise, y, means).metrics["nc1"]


def test_cli_json_matches_the_construction(runs: Path) -> None:
    base = _base_nc1()
    levels = [base / 100, base / 300, base / 1000]
    given = ",".join(repr(x) for x in levels)
    res = cli("compare", runs / "a", runs / "b", "--by", "layer", "--levels", given, "-f", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["by"] == "layer" and doc["at"] == "nc1" and doc["runs"] == ["a", "b"]
    assert doc["final_layer"] == {"a": FINAL, "b": FINAL}
    assert doc["layers"] == NAMES and doc["only_in_a"] == [] and doc["only_in_b"] == ["embed"]
    assert doc["notes"] == ["layer(s) only in b, not compared: embed"]
    assert doc["metrics"] == ["nc1", "nc2_etf_means"]
    for level, entry in zip(levels, doc["levels"], strict=True):
        assert entry["nc1"] == level
        etf = {}
        for side, q, scales in (("a", QA, SCALES_A), ("b", QB, SCALES_B)):
            match = entry[side]
            # the crossing: final-layer nc1 = base s_e^2 q^6 between consecutive epochs
            epochs = list(scales)
            finals = [base * scales[e] ** 2 * q**6 for e in epochs]
            i = next(i for i in range(len(finals) - 1) if finals[i] > level > finals[i + 1])
            t = math.log(level / finals[i]) / math.log(finals[i + 1] / finals[i])
            assert match["between"] == [
                f"epoch_{epochs[i]:03d}.pt",
                f"epoch_{epochs[i + 1]:03d}.pt",
            ]
            assert match["t"] == pytest.approx(t, rel=1e-9)
            assert match["epoch"] == pytest.approx(epochs[i] + t * (epochs[i + 1] - epochs[i]))
            for rank, layer in enumerate(NAMES):
                # at the matched point every layer's nc1 is L q^(2(r - 3)), whatever the epochs
                expected = level * q ** (2 * (rank - 3))
                assert match["layers"][layer]["nc1"] == pytest.approx(expected, rel=1e-9)
            etf[side] = [match["layers"][layer]["nc2_etf_means"] for layer in NAMES]
        # the class means never change: the ETF error of the means is one number everywhere
        assert max(etf["a"] + etf["b"]) - min(etf["a"] + etf["b"]) < 1e-12
        for rank, layer in enumerate(NAMES):
            expected = level * (QB ** (2 * (rank - 3)) - QA ** (2 * (rank - 3)))
            assert entry["diff"][layer]["nc1"] == pytest.approx(expected, rel=1e-9)
            assert entry["diff"][layer]["nc2_etf_means"] == pytest.approx(0.0, abs=1e-12)
    # first passages: the first checkpoint at or below each level
    for side, q, scales in (("a", QA, SCALES_A), ("b", QB, SCALES_B)):
        for level in levels:
            first = next(e for e in scales if base * scales[e] ** 2 * q**6 <= level)
            assert doc["first_epoch_reaching"][side][repr(level)] == first


def test_cli_table_csv_and_markdown(runs: Path) -> None:
    base = _base_nc1()
    args = ("compare", runs / "a", runs / "b", "--by", "layer", "--levels", repr(base / 100))
    table = cli(*args, "--width", "200")
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "a vs b at final-layer nc1 = " in table.stdout
    rows = [line for line in lines if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows[: len(NAMES)]] == NAMES
    assert "note: layer(s) only in b, not compared: embed" in table.stdout
    assert "first epoch whose final" in table.stdout
    got = cli(*args, "-f", "csv", "-m", "nc1")
    assert got.exit_code == 0, got.stderr
    assert got.stderr == "note: layer(s) only in b, not compared: embed\n"
    records = list(csv.DictReader(io.StringIO(got.stdout)))
    assert [r["layer"] for r in records] == NAMES and {r["metric"] for r in records} == {"nc1"}
    for rank, r in enumerate(records):
        level = float(r["nc1"])
        assert float(r["a"]) == pytest.approx(level * QA ** (2 * (rank - 3)), rel=1e-9)
        assert float(r["diff"]) == pytest.approx(float(r["b"]) - float(r["a"]), rel=1e-9)
    md = cli(*args, "-f", "markdown")
    assert md.exit_code == 0 and "| layer | NC1 a | NC1 b | NC1 diff |" in md.stdout


def test_cli_errors(runs: Path, tmp_path: Path) -> None:
    res = cli("compare", runs / "a", runs / "c", "--by", "layer", "--levels", "0.1")
    assert res.exit_code == 2
    assert res.stderr == (
        "ncinspect: error: runs a and c have no layer in common: a has stem, body.10, body.9, "
        "fc:input; c has x.stem, x.body.10, x.body.9, x.fc:input\n"
    )
    res = cli("compare", runs / "a", runs / "b", "--by", "layer", "-m", "nc1,bogus")
    assert res.exit_code == 2
    assert res.stderr.startswith("ncinspect: error: --metrics: unknown key(s) bogus; known keys:")
    res = cli("compare", runs / "a", runs / "b", "--by", "layer", "--plot", tmp_path / "p")
    assert res.exit_code == 2
    assert res.stderr == (
        "ncinspect: error: --plot draws the matched panel of --by run; not with --by layer\n"
    )
    plain = tmp_path / "plain"
    rng = np.random.default_rng(1)
    x, w, y = rng.normal(size=(12, 4)), rng.normal(size=(3, 4)), np.repeat(np.arange(3), 4)
    write_store(plain / "e1.h5", features=x, weight=w, labels=y, attrs={"run": "plain"})
    res = cli("compare", plain, runs / "b", "--by", "layer")
    assert res.exit_code == 2
    assert res.stderr == (
        f"ncinspect: error: --by layer: no layer store found in {plain}; write them with "
        "extract --layers\n"
    )
    res = cli("compare", runs, runs / "b", "--by", "layer")
    assert res.exit_code == 2
    assert res.stderr == f"ncinspect: error: {runs}: expected one run, found 3 (a, b, c)\n"


def test_default_compare_of_layer_stores_points_at_by_layer(runs: Path) -> None:
    res = cli("compare", runs / "a", runs / "b")
    assert res.exit_code == 2
    assert res.stderr == (
        f"ncinspect: error: {runs / 'a'} holds layer stores (extract --layers) only: compare "
        "them with --by layer\n"
    )
