"""Sampling in all three modes -> Candidates with provenance; CLI; errors; evaluation pieces."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from typer.testing import CliRunner

from generators.candidate import Candidate
from generators.data import read_table
from generators.voxel.checkpoints import load_checkpoint
from generators.voxel.data_cache import load_voxel_data
from generators.voxel.evaluate import check_targets, evaluate_reconstruction, evaluate_sampling
from generators.voxel.sample import VoxelGenerator, default_model_dir
from generators.voxel.settings import VoxelSettings
from generators.voxel.train_unet import train_unet
from generators.voxel.train_vae import train_vae
from generators.voxel.training_settings import GeneratorSettings

N = 16


@pytest.fixture(scope="module")
def records(small_csv):
    recs, _ = read_table(small_csv)
    return small_csv, recs


@pytest.fixture(scope="module")
def tiny_model(records, tmp_path_factory):
    """A tiny UNet + VAE really trained (briefly) on 30 real perovskites, on a 16^3 grid."""
    path, _ = records
    folder = tmp_path_factory.mktemp("model")
    data = load_voxel_data(
        str(path), voxel=VoxelSettings(n_grid=N), cache_dir=folder / "cache", progress=False
    )
    settings = GeneratorSettings(
        unet_channels=(4, 8),
        unet_lr=1e-2,
        unet_batch=5,
        unet_epochs=3,
        vae_channels=(4, 8, 8),
        latent_dim=8,
        vae_lr=3e-3,
        vae_batch=5,
        vae_epochs=2,
        threads=1,
        val_max=5,
    )
    train_unet(data, folder / "unet.pt", settings, progress=False, log=lambda m: None)
    train_vae(
        data, folder / "unet.pt", folder / "vae.pt", settings, progress=False, log=lambda m: None
    )
    return folder


@pytest.fixture(scope="module")
def generator(tiny_model):
    return VoxelGenerator.load(tiny_model)  # voxel settings travel in the checkpoint


def _check(cands: list[Candidate], n: int, mode: str, gen: VoxelGenerator) -> None:
    assert len(cands) == n
    for c in cands:
        assert isinstance(c, Candidate) and isinstance(c.structure, Structure)
        p = c.provenance
        assert p.generator == "voxel-vae" and p.mode == mode
        assert p.model_version == gen.model_version
        assert p.condition["property"] == "formation_energy_per_atom"
        assert 0 <= p.condition["decile"] <= 9
        assert len(p.latent) == gen.latent_dim
        assert set(c.validity) == {"decoded", "min_distance"}
        assert c.structure.lattice.is_orthogonal


def test_sample_random_is_reproducible_per_candidate(generator):
    cands = generator.sample_random(4, decile=2, seed=7)
    _check(cands, 4, "random", generator)
    assert [c.provenance.seed for c in cands] == [7, 8, 9, 10]
    again = generator.sample_random(1, decile=2, seed=9)[0]  # candidate 2 on its own
    assert again.provenance.latent == cands[2].provenance.latent
    assert again.structure == cands[2].structure
    lo, hi = cands[0].provenance.condition["range"]
    assert lo < hi


def test_sample_around_uses_the_base_decile(generator, records):
    _, recs = records
    base = recs[0]
    cands = generator.sample_around(base, 3, seed=1)
    _check(cands, 3, "targeted", generator)
    expected = generator.decile_of(base.properties["formation_energy_per_atom"])
    assert all(c.provenance.condition["decile"] == expected for c in cands)
    assert cands[0].provenance.condition["source"] == "property"
    assert cands[0].provenance.base_id == base.source_id
    # a bare Structure has no property: the best-reconstructing decile is used and recorded
    bare = generator.sample_around(base.structure, 2, sigma2=0.0, seed=1)
    assert bare[0].provenance.condition["source"] == "best-reconstruction"
    assert bare[0].provenance.latent == bare[1].provenance.latent  # sigma2 = 0: the mean


def test_interpolation_runs_from_a_to_b(generator, records):
    _, recs = records
    cands = generator.interpolate(recs[0], recs[1], steps=4)
    _check(cands, 4, "interpolation", generator)
    assert [c.provenance.extra["t"] for c in cands] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert cands[0].provenance.base_id == f"{recs[0].source_id}->{recs[1].source_id}"
    with pytest.raises(ValueError, match="steps >= 2"):
        generator.interpolate(recs[0], recs[1], steps=1)


def test_condition_out_of_range_and_bad_base(generator, records):
    with pytest.raises(ValueError, match=r"0\.\.9"):
        generator.sample_random(2, decile=10)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        generator.sample_around(records[1][0], 2, decile=-1)
    with pytest.raises(TypeError, match="Structure or a Record"):
        generator.sample_around("CaTiO3", 2)


def test_missing_checkpoint_is_a_clear_error(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match="VAE checkpoint not found"):
        VoxelGenerator.load(tmp_path)
    shutil.copy(tiny_model / "vae.pt", tmp_path / "vae.pt")
    with pytest.raises(FileNotFoundError, match="UNet checkpoint not found"):
        VoxelGenerator.load(tmp_path / "vae.pt")


def test_evaluation_pieces(generator, records):
    _, recs = records
    rec = evaluate_reconstruction(generator, recs[:3])
    assert rec["structures"] == 3
    for key in (
        "unet_recall_nonzero",
        "pipeline_mean_emd_A",
        "pipeline_lattice_mae_A",
        "pipeline_mean_abs_delta_n",
        "vae_mse_per_voxel",
        "unet_recall_class_mean",
    ):
        assert rec[key] >= 0
    smp = evaluate_sampling(generator, per_decile=1, training=[r.structure for r in recs])
    assert smp["sampled"] == 10 and 0 <= smp["random_valid_fraction"] <= 1
    assert smp["candidates_per_s"] > 0
    targets = check_targets(rec | smp)
    assert targets["pipeline_mean_emd_A"]["target"] == "<= 0.09"


def test_shipped_default_model_samples_valid_crystals():
    """A fresh install samples without training: the default model is package data."""
    assert (default_model_dir() / "vae.pt").is_file()
    gen = VoxelGenerator.load()
    state = load_checkpoint(default_model_dir() / "vae.pt", "vae")
    assert "optimizer" not in state and len(state["decile_edges"]) == 9
    cands = gen.sample_random(6, decile=4, seed=0)
    _check(cands, 6, "random", gen)
    assert sum(c.is_valid for c in cands) >= 1
    assert all(len(c.structure) > 0 for c in cands if c.is_valid)


def test_charge_balanced_species_on_the_shipped_model():
    """Same latents, same sites: the joint assignment only changes elements, and every cell it
    reports balanced passes SMACT (measured on 500 samples: 99.8 % valid vs 94.8 % by vote)."""
    from generators.generation_metrics import composition_valid

    vote = VoxelGenerator.load(species="vote").sample_random(20, decile=5, seed=7)
    joint = VoxelGenerator.load().sample_random(20, decile=5, seed=7)
    for a, b in zip(vote, joint, strict=True):
        assert np.allclose(a.structure.frac_coords, b.structure.frac_coords)
        assert a.provenance.extra["species"] == "vote" and "assignment" not in a.provenance.extra
        assert b.provenance.extra["species"] == "charge-balanced"
    balanced = [c for c in joint if c.provenance.extra["assignment"]["balanced"]]
    assert len(balanced) >= 18
    assert all(composition_valid(c.structure.composition) for c in balanced)
    with pytest.raises(ValueError, match="species must be one of"):
        VoxelGenerator.load(species="majority")


def test_sample_cli_writes_cifs_and_summary(tiny_model, tmp_path):
    from agent.cli import app

    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "sample",
            "--out",
            str(out),
            "-n",
            "3",
            "--model",
            str(tiny_model),
            "--seed",
            "3",
            "--decile",
            "5",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 3 and rows[0]["seed"] == "3" and rows[0]["decile"] == "5"
    for row in rows:
        if row["file"]:
            assert Structure.from_file(out / row["file"])
    bad = runner.invoke(
        app, ["sample", "--out", str(out), "--model", str(tiny_model), "--decile", "11"]
    )
    assert bad.exit_code == 1 and "0..9" in bad.output
    missing = runner.invoke(app, ["sample", "--out", str(out), "--model", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_region_vote_gives_one_species_per_region(generator):
    """A region whose voxels flip between species decodes to one site of the majority."""
    species = np.zeros((N, N, N), dtype=np.int64)
    species[2:6, 2:6, 2:6] = 8
    species[3, 3, 3] = 22  # one stray voxel of another element inside the O region
    confidence = np.ones(species.shape)
    voted = generator.vote_regions(species, confidence)
    assert set(np.unique(voted[2:6, 2:6, 2:6])) == {8}
    assert voted[species == 0].max() == 0


def test_decoding_workers_give_the_same_crystals(tiny_model):
    """The process pool only moves decoding off the main process; results are identical."""
    inline = VoxelGenerator.load(tiny_model).sample_random(6, decile=3, seed=11)
    pooled_gen = VoxelGenerator.load(tiny_model, workers=2, batch_size=4)  # 2 batches in flight
    try:
        pooled = pooled_gen.sample_random(6, decile=3, seed=11)
    finally:
        pooled_gen.close()
    assert [c.structure for c in pooled] == [c.structure for c in inline]
    assert [c.validity for c in pooled] == [c.validity for c in inline]
    with pytest.raises(ValueError, match="workers"):
        VoxelGenerator.load(tiny_model, workers=0)


@pytest.fixture()
def model_copy(tiny_model, records, tmp_path):
    """A writable copy of the tiny model, and its training data (for steps that edit vae.pt)."""
    path, _ = records
    data = load_voxel_data(
        str(path), voxel=VoxelSettings(n_grid=N), cache_dir=tmp_path / "cache", progress=False
    )
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder, data


def test_fitted_latent_prior_is_stored_and_used(tiny_model, model_copy):
    """`train prior` adds a Gaussian fitted to the training posteriors; sampling then uses it."""
    from generators.voxel.prior import add_latent_prior, posterior_means

    folder, data = model_copy
    state = load_checkpoint(folder / "vae.pt", "vae")
    mu = posterior_means(state, data)
    assert len(mu) == len(data) - len(state["data"]["val_ids"])  # training split only
    prior = add_latent_prior(folder / "vae.pt", data)
    assert torch.allclose(prior["mean"], mu.mean(0), atol=1e-5)
    cov = prior["scale_tril"] @ prior["scale_tril"].T
    assert torch.allclose(cov.diagonal(), mu.double().var(0).float() + 1e-3, rtol=1e-3)

    fitted = VoxelGenerator.load(folder, prior="fitted")
    standard = VoxelGenerator.load(folder, prior="standard")
    assert fitted.prior == "fitted" and standard.prior == "standard"
    assert VoxelGenerator.load(folder).prior == "kde"  # auto: the first the checkpoint has
    a = fitted.sample_random(3, decile=1, seed=5)
    b = standard.sample_random(3, decile=1, seed=5)
    _check(a, 3, "random", fitted)
    assert a[0].provenance.condition["prior"] == "fitted"
    z_a, z_b = torch.tensor(a[0].provenance.latent), torch.tensor(b[0].provenance.latent)
    expected = prior["mean"] + prior["scale_tril"] @ z_b  # same noise, mapped by the fit
    assert torch.allclose(z_a, expected, atol=1e-3)
    with pytest.raises(ValueError, match="no fitted latent prior"):
        VoxelGenerator.load(tiny_model, prior="fitted")


def test_kde_prior_draws_around_training_latents_of_the_asked_decile(tiny_model, model_copy):
    """The per-decile kernel density: z = mu_anchor + h L eps, the anchor a training crystal
    of the decile asked for, recorded in the provenance."""
    from generators.voxel.prior import KDE_BANDWIDTH, add_latent_prior, training_posteriors

    folder, data = model_copy
    prior = add_latent_prior(folder / "vae.pt", data)
    mu, deciles, ids = training_posteriors(load_checkpoint(folder / "vae.pt", "vae"), data)
    kde = prior["kde"]
    assert kde["bandwidth"] == KDE_BANDWIDTH and kde["ids"] == ids
    assert torch.allclose(kde["means"].float(), mu, atol=1e-2 * float(mu.abs().max()))
    gen = VoxelGenerator.load(folder, prior="kde")
    standard = VoxelGenerator.load(folder, prior="standard")
    decile = int(deciles[0])
    a = gen.sample_random(4, decile=decile, seed=9)
    b = standard.sample_random(4, decile=decile, seed=9)  # the same noise, unmapped
    _check(a, 4, "random", gen)
    for ca, cb in zip(a, b, strict=True):
        anchor = ca.provenance.extra["anchor"]
        j = ids.index(anchor)
        assert deciles[j] == decile
        assert ca.provenance.condition == ca.provenance.condition | {
            "prior": "kde",
            "bandwidth": KDE_BANDWIDTH,
        }
        noise = torch.tensor(cb.provenance.latent)
        expected = kde["means"][j].float() + KDE_BANDWIDTH * prior["scale_tril"] @ noise
        assert torch.allclose(torch.tensor(ca.provenance.latent), expected, atol=1e-3)
    wide = VoxelGenerator.load(folder, bandwidth=1.0)
    assert wide.sample_random(1, decile, seed=9)[0].provenance.condition["bandwidth"] == 1.0
    with pytest.raises(ValueError, match="bandwidth applies to prior='kde' only"):
        VoxelGenerator.load(folder, prior="fitted", bandwidth=0.5)
    with pytest.raises(ValueError, match="prior must be one of"):
        VoxelGenerator.load(folder, prior="gmm")


def test_tuned_decoding_settings_are_stored_and_used(tiny_model, model_copy):
    """`train decoding` scores each setting on training structures and stores the best."""
    from generators.voxel.decode_tuning import add_decoding_settings

    folder, data = model_copy
    grid = {"marker_smoothing_voxels": (1.0, 3.0), "min_region_voxels": (4, 8)}
    result = add_decoding_settings(folder / "vae.pt", data, limit=6, grid=grid)
    held_out = set(load_checkpoint(folder / "vae.pt", "vae")["data"]["val_ids"])
    assert result["n_structures"] == min(6, len(data) - len(held_out))
    assert len(result["table"]) == 4
    best = min(result["table"], key=lambda r: (r["mean_emd_A"], r["mean_abs_delta_n"]))
    assert result["settings"] == {k: best[k] for k in grid}
    assert result["representation_defaults"]["min_region_voxels"] == 4
    tuned = VoxelGenerator.load(folder)
    for key, value in result["settings"].items():
        assert getattr(tuned.voxel_settings, key) == value
    assert VoxelGenerator.load(tiny_model).voxel_settings.min_region_voxels == 4
    with pytest.raises(ValueError, match="can be tuned"):
        add_decoding_settings(folder / "vae.pt", data, limit=2, grid={"n_grid": (8,)})


def test_train_prior_and_decoding_commands(tiny_model, records, tmp_path, monkeypatch):
    """The CLI steps that finish a model: fit the latent prior, then tune decoding."""
    from agent.cli import app

    path, _ = records
    monkeypatch.setenv("CRYSTALLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CRYSTALLOOP_VOXEL_N_GRID", str(N))
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    runner = CliRunner()
    vae = str(folder / "vae.pt")
    prior = runner.invoke(app, ["train", "prior", "--data", str(path), "--vae", vae])
    assert prior.exit_code == 0, prior.output
    tuned = runner.invoke(
        app, ["train", "decoding", "--data", str(path), "--vae", vae, "--limit", "3"]
    )
    assert tuned.exit_code == 0, tuned.output
    assert "EMD" in tuned.output
    state = load_checkpoint(folder / "vae.pt", "vae")
    assert state["latent_prior"]["n_fitted"] > 0
    assert len(state["decoding"]["table"]) == 20 and state["decoding"]["n_structures"] == 3
    missing = runner.invoke(
        app, ["train", "decoding", "--data", str(path), "--vae", str(tmp_path / "none.pt")]
    )
    assert missing.exit_code == 1 and "not found" in missing.output
