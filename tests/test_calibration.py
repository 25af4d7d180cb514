"""Sigma recalibration: the fit, its cross-fitted report, the surrogate applying it in
predict (so every policy ranks on it), persistence, the shipped model and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from policies.calibration import (
    TARGET_1,
    TARGET_2,
    SigmaCalibration,
    coverage,
    cross_fitted,
    fit_sigma_calibration,
)
from policies.cgcnn import CGCNNConfig
from policies.settings import PolicySettings
from policies.surrogate import PROPERTIES, Surrogate, load_default


def overconfident(n: int, seed: int, factor: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian errors whose true spread is `factor` times the reported sigma."""
    rng = np.random.default_rng(seed)
    sigma = rng.lognormal(-2.0, 0.5, n)
    return np.abs(rng.normal(0.0, factor * sigma)), sigma


def test_fit_recovers_the_missing_scale_and_covers_fresh_rows() -> None:
    errors, sigma = overconfident(2000, 0)
    assert coverage(errors, sigma)[0] < 0.3  # 1/3 of the true spread
    cal = fit_sigma_calibration(errors, sigma)
    assert cal.scale == pytest.approx(3.0, rel=0.1) and cal.n == 2000
    fresh_errors, fresh_sigma = overconfident(4000, 1)
    c1, c2 = coverage(fresh_errors, cal.apply(fresh_sigma))
    assert c1 == pytest.approx(TARGET_1, abs=0.03) and c2 == pytest.approx(TARGET_2, abs=0.02)


def test_floor_covers_rows_on_which_all_members_agree() -> None:
    errors, sigma = overconfident(600, 2)
    sigma[::3] = 0.0  # a third of the rows: identical members, errors all the same
    cal = fit_sigma_calibration(errors, sigma)
    assert cal.floor > 0
    assert fit_sigma_calibration(errors[:50], sigma[:50]).floor == 0.0  # too few rows for two


def test_too_few_rows_leave_sigma_as_it_is() -> None:
    cal = fit_sigma_calibration(np.array([1.0, 2.0]), np.array([0.1, 0.1]))
    assert cal == SigmaCalibration(n=2)
    assert np.array_equal(cal.apply(np.array([0.5, 2.0])), np.array([0.5, 2.0]))


def test_cross_fitted_report() -> None:
    errors, sigma = overconfident(1000, 3)
    report = cross_fitted(errors, sigma, folds=5)
    assert report["n"] == 1000 and report["folds"] == 5
    raw = coverage(errors, sigma)
    assert (report["within_1_sigma_raw"], report["within_2_sigma_raw"]) == raw
    assert 0.60 <= report["within_1_sigma"] <= 0.75 and 0.90 <= report["within_2_sigma"] <= 0.98
    low, high = report["fold_within_1_sigma"]
    assert low <= report["within_1_sigma"] <= high


@pytest.fixture(scope="module")
def perov(perov_csv) -> tuple[list[Structure], np.ndarray]:
    frame = pd.read_csv(perov_csv, nrows=40)
    return [Structure.from_str(c, fmt="cif") for c in frame["cif"]], frame["heat_ref"].to_numpy()


def tiny(members: int = 3) -> Surrogate:
    cfg = CGCNNConfig(atom_fea_len=16, n_conv=1, h_fea_len=8)
    return Surrogate(cfg, members, PolicySettings(n_members=members, batch_size=16))


def test_predict_ranks_on_calibrated_sigma_and_checkpoints_keep_it(perov, tmp_path) -> None:
    structures, y = perov
    model = tiny()
    model.fit(structures[:25], {"formation_energy_per_atom": y[:25]}, epochs=2)
    prop = "formation_energy_per_atom"
    fitted = model.calibrate(structures[25:], {prop: y[25:]})[prop]
    assert fitted.n == 15 and model.calibration[prop] == fitted
    raw = model.predict(structures[25:], [prop], calibrated=False)
    cal = model.predict(structures[25:], [prop])
    np.testing.assert_allclose(cal[prop][0], raw[prop][0])  # means untouched
    np.testing.assert_allclose(cal[prop][1], fitted.apply(raw[prop][1]))
    moving = raw[prop][1] > 0  # members widened to the calibrated spread (Thompson)
    np.testing.assert_allclose(cal.members[prop].std(0)[moving], cal[prop][1][moving], rtol=1e-6)
    path = model.save(tmp_path / "calibrated.pt")
    again = Surrogate.load(path)
    assert again.calibration == model.calibration
    np.testing.assert_allclose(
        again.predict(structures[25:], [prop])[prop][1], cal[prop][1], rtol=1e-5
    )
    state = again.state()
    del state["calibration"]  # a checkpoint from before calibration existed
    assert Surrogate.from_state(state).calibration == {}


def test_shipped_model_is_calibrated_for_every_property_with_data() -> None:
    model = load_default()
    assert set(model.calibration) == set(PROPERTIES) - {"energy_per_atom"}  # no data for it
    for prop, cal in model.calibration.items():
        assert cal.scale > 1.0 and cal.n >= 200, prop  # the raw spread was too narrow


def test_calibrate_command(small_csv, tmp_path) -> None:
    from agent.cli import app

    start = tmp_path / "tiny.pt"
    model = tiny(2)
    model.trained["formation_energy_per_atom"] = True
    model.save(start)
    out, report = tmp_path / "calibrated.pt", tmp_path / "report.json"
    args = ["surrogate", "calibrate", "--data", str(small_csv), "--checkpoint", str(start)]
    args += ["--out", str(out), "--holdout", "0.5", "--report", str(report)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())["formation_energy_per_atom"]
    assert figures["n"] == 15 and figures["folds"] == 5 and figures["scale"] > 0
    cal = Surrogate.load(out).calibration["formation_energy_per_atom"]
    assert cal.n == 15 and cal.scale == figures["scale"]
