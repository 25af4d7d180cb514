"""The VAE's species head: embedding, warm start from a paper-style VAE, training, sampling
and the campaign fine-tune on real perovskites (tiny models, 16^3 grids)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from test_voxel_training import N, tiny_settings

from generators.voxel.checkpoints import build_vae, load_checkpoint
from generators.voxel.data_cache import load_voxel_data
from generators.voxel.sample import VoxelGenerator
from generators.voxel.settings import VoxelSettings
from generators.voxel.train_unet import train_unet
from generators.voxel.train_vae import train_vae
from generators.voxel.training_settings import GeneratorSettings
from generators.voxel.vae import ConditionalVAE, VAEConfig, species_embedding, with_species_head

QUIET = {"progress": False, "log": lambda m: None}


def tiny(**kw) -> GeneratorSettings:
    """test_voxel_training's tiny models, with the perceptual term of the shipped runs."""
    return tiny_settings(**({"alpha": 0.01, "unet_epochs": 2} | kw))


@pytest.fixture(scope="module")
def data(small_csv, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_voxel_data(
        str(small_csv), voxel=VoxelSettings(n_grid=N), cache_dir=cache, progress=False
    )


@pytest.fixture(scope="module")
def models(data, tmp_path_factory):
    """A tiny UNet, a paper-style VAE, and that VAE continued with a species head."""
    root = tmp_path_factory.mktemp("models")
    unet, plain, head = root / "unet.pt", root / "plain.pt", root / "head.pt"
    train_unet(data, unet, tiny(), **QUIET)
    train_vae(data, unet, plain, tiny(), **QUIET)
    result = train_vae(
        data,
        unet,
        head,
        tiny(
            vae_epochs=8,
            vae_lr=1e-3,
            vae_species_head=True,
            vae_freeze_batchnorm=True,
            val_every=4,
        ),
        resume=plain,
        **QUIET,
    )
    return unet, plain, head, result


def test_embedding_tells_elements_apart():
    z = np.array([[[[0, 8], [7, 9]], [[57, 58], [16, 38]]]], dtype=np.int16)  # (1, 2, 2, 2)
    emb = species_embedding(z)
    assert emb.shape == (1, 3, 2, 2, 2)
    assert torch.all(emb[0, :, 0, 0, 0] == 0)  # empty
    oxygen = emb[0, :, 0, 0, 1]
    assert torch.allclose(oxygen, torch.tensor([0.08, 2 / 7, 16 / 18]))
    nitrogen, fluorine = emb[0, :, 0, 1, 0], emb[0, :, 0, 1, 1]
    assert nitrogen[2] < oxygen[2] < fluorine[2]  # neighbouring anions: a group apart
    la, ce = emb[0, :, 1, 0, 0], emb[0, :, 1, 0, 1]
    assert la[2] == ce[2] and la[0] != ce[0]  # the f-block shares group 3; Z separates it
    sulfur = emb[0, :, 1, 1, 0]
    assert sulfur[2] == oxygen[2] and sulfur[1] > oxygen[1]  # same group, next period


def test_widening_keeps_the_trained_function():
    torch.manual_seed(0)
    plain = ConditionalVAE(VAEConfig(n_grid=N, latent_dim=8, channels=(4, 8, 8))).eval()
    wide = with_species_head(plain, 5).eval()
    assert wide.config.species_classes == 5 and wide.config.encoder_channels == 7
    x = torch.rand(2, 4, N, N, N)
    species = np.zeros((2, N, N, N), dtype=np.int16)
    species[:, :4] = 8
    x7 = torch.cat([x, species_embedding(species)], 1)
    cond = torch.nn.functional.one_hot(torch.tensor([1, 7]), 10).float()
    with torch.no_grad():
        mu, _ = plain.encode(x, cond)
        mu_wide, _ = wide.encode(x7, cond)
        assert torch.allclose(mu, mu_wide, atol=1e-6)  # zero weights on the new channels
        recon, feats = wide.decode_species(mu_wide, cond)
        assert torch.allclose(recon, plain.decode(mu, cond), atol=1e-6)
        logits, occupancy = wide.species_logits(feats)
    assert logits.shape == (2, 5, N, N, N) and occupancy.shape == (2, N, N, N)
    with pytest.raises(ValueError, match="already has a species head"):
        with_species_head(wide, 5)
    with pytest.raises(ValueError, match="no species head"):
        plain.decode_species(mu, cond)


def test_species_head_trains_and_is_recorded(data, models):
    unet, plain, head, result = models
    state = load_checkpoint(head, "vae")
    assert state["config"]["species_classes"] == len(state["elements"]) + 1
    assert state["elements"] == load_checkpoint(unet, "unet")["elements"]
    assert 0 <= result.metrics["val_species_recall"] <= 1
    assert sum("val_species_ce" in h for h in state["metrics"]["history"]) >= 3
    # the head learns its training crystals (held-out CE on 6 tiny-split crystals, most with
    # elements seen once, is no measure): species CE below the freshly added head's
    train_rows = [i for i, d in enumerate(data.ids) if d not in set(state["data"]["val_ids"])]
    torch.manual_seed(0)
    fresh_model = with_species_head(
        build_vae(load_checkpoint(plain, "vae")), len(state["elements"]) + 1
    )
    assert _species_ce(build_vae(state), state, data, train_rows) < _species_ce(
        fresh_model.eval(), state, data, train_rows
    )
    phase = state["phases"][-1]
    assert phase["species_weight"] == 0.01 and phase["frozen_batchnorm"] is True
    # frozen batch norm keeps the trained trunk's statistics; the new decoder learns its own
    before = load_checkpoint(plain, "vae")["state_dict"]
    after = state["state_dict"]
    trunk = [k for k in before if k.endswith("running_mean")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)
    fresh = [k for k in after if k.startswith("species_decoder") and k.endswith("running_mean")]
    assert fresh and all(after[k].abs().sum() > 0 for k in fresh)
    # a head cannot be dropped by resuming without the flag
    with pytest.raises(ValueError, match="has a species head"):
        train_vae(data, unet, head.parent / "x.pt", tiny(), resume=head, **QUIET)


def _species_ce(model, state, data, rows) -> float:
    from generators.splits import assign_deciles
    from generators.voxel.inputs import class_lookup, vae_input
    from generators.voxel.losses import vae_objective
    from generators.voxel.vae import one_hot_decile

    rows = np.asarray(rows[:10])
    x = vae_input(
        data.density[rows],
        data.lattice[rows],
        state["density_scale"],
        state["coord_scale"],
        data.species[rows],
    )
    cond = one_hot_decile(assign_deciles(data.values[rows], np.asarray(state["decile_edges"])))
    target = torch.from_numpy(class_lookup(state["elements"])[data.species[rows]])
    weights = torch.ones(model.config.species_classes)
    weights[0] = 0
    with torch.no_grad():
        parts, _, _ = vae_objective(model, x, cond, target, 0.0, 0.0, None, weights, 1.0)
    return float(parts["species_ce"])


def test_generator_reads_elements_from_the_head(models):
    unet, plain, head, _ = models
    unet_state = load_checkpoint(unet, "unet")
    gen = VoxelGenerator(load_checkpoint(head, "vae"), unet_state)
    assert gen.decoder == "vae"
    cands = gen.sample_random(3, 4, seed=5)
    assert len(cands) == 3
    assert all(c.provenance.extra["decoder"] == "vae" for c in cands)
    again = gen.sample_random(3, 4, seed=5)
    assert [str(c.structure.composition) for c in cands] == [
        str(c.structure.composition) for c in again
    ]
    srtio3 = Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    x, z = gen.encode_grids([srtio3])
    assert x.shape == (1, 7, N, N, N)  # density, coordinates, species embedding
    assert torch.allclose(x[0, 4:], species_embedding(z)[0])
    assert set(np.unique(z)) == {0, 8, 22, 38}
    via_unet = VoxelGenerator(load_checkpoint(head, "vae"), unet_state, decoder="unet")
    assert via_unet.sample_random(1, 4, seed=5)[0].provenance.extra["decoder"] == "unet"
    with pytest.raises(ValueError, match="has none"):
        VoxelGenerator(load_checkpoint(plain, "vae"), unet_state, decoder="vae")
    with pytest.raises(ValueError, match="decoder must be one of"):
        VoxelGenerator(load_checkpoint(plain, "vae"), unet_state, decoder="watershed")
    assert VoxelGenerator(load_checkpoint(plain, "vae"), unet_state).decoder == "unet"


def test_fine_tune_trains_the_head_and_reports_its_recall(models, small_csv, crystalloop_home):
    from generators.data import load_source
    from generators.splits import record_id
    from generators.voxel.finetune import VoxelFineTuneSettings, fine_tune

    unet, _, head, _ = models
    vae_state, unet_state = load_checkpoint(head, "vae"), load_checkpoint(unet, "unet")
    records, _ = load_source(str(small_csv))
    held = set(vae_state["data"]["val_ids"])
    new = [r.structure for r in records if record_id(str(small_csv), r) not in held][:3]
    settings = VoxelFineTuneSettings(
        steps=6, batch=4, held_out=4, samples=4, mse_tolerance=10.0, recall_tolerance=1.0
    )
    result = fine_tune(vae_state, unet_state, new, sources=[str(small_csv)], settings=settings)
    assert result.deployed, result.reason
    b, a = result.metrics["before"], result.metrics["after"]
    assert 0 <= b["held_out_species_recall"] <= 1 and 0 <= a["held_out_species_recall"] <= 1
    moved = result.state["state_dict"]["species_head.weight"]
    assert not torch.equal(moved, vae_state["state_dict"]["species_head.weight"])
    assert VoxelGenerator(result.state, unet_state).decoder == "vae"
