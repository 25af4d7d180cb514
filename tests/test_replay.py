"""The replay loop on a tiny real pool, and the one-command benchmark end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure
from typer.testing import CliRunner

from policies.replay import ReplayConfig, embed_structures, run_replay, write_outputs

N = 60


@pytest.fixture(scope="module")
def pool(perov_csv):
    frame = pd.read_csv(perov_csv, nrows=N)
    structures = [Structure.from_str(c, fmt="cif") for c in frame["cif"]]
    return embed_structures(structures), frame["heat_ref"].to_numpy()


def test_replay_loop_on_tiny_pool(pool, tmp_path) -> None:
    features, y = pool
    assert features.shape == (N, 65)
    config = ReplayConfig(
        policies=["random", "greedy", {"name": "ucb", "kappa": 1.0}],
        seeds=2,
        n_initial=6,
        batch_size=4,
        iterations=3,
        members=3,
        steps=25,
    )
    result = run_replay(features, y, config)
    assert result["n_hits"] == int((y <= np.quantile(y, 0.1)).sum())
    for label in ("random", "greedy", "ucb(kappa=1.0)"):
        curves = result["curves"][label]
        assert len(curves) == 2
        for curve in curves:
            assert len(curve) == 6 + 3 * 4
            assert all(b - a in (0, 1) for a, b in zip(curve, curve[1:], strict=False))
        s = result["summary"][label]
        assert s["oracle_calls"] == 18 and 0 <= s["all_alm_mean"] <= 1
    assert result["summary"]["random"]["enhancement_factor_vs_random"] == 1.0
    json_path, png_path = write_outputs(result, tmp_path)
    assert json.loads(json_path.read_text())["summary"]
    assert png_path.read_bytes()[:4] == b"\x89PNG"


def test_policies_benchmark_command(perov_csv, tmp_path) -> None:
    from agent.cli import app

    small = tmp_path / "pool.csv"
    pd.read_csv(perov_csv, nrows=40).to_csv(small, index=False)
    config = tmp_path / "replay.yaml"
    config.write_text(
        "policies: [random, greedy]\nn_initial: 5\nbatch_size: 5\nmembers: 2\nsteps: 20\n"
    )
    out = tmp_path / "out"
    args = ["policies", "benchmark", "--data", str(small), "--out", str(out)]
    args += ["--config", str(config), "--seeds", "1", "--iterations", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "replay.json").is_file() and (out / "replay.png").is_file()
    bad = CliRunner().invoke(app, ["policies", "benchmark", "--data", str(tmp_path / "nope.csv")])
    assert bad.exit_code == 1 and "no such data source" in bad.output
