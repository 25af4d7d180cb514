"""Training on real perovskites: data caching, split, a loss that goes down, resume, round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generators.splits import assign_deciles, decile_edges, split_indices
from generators.voxel.checkpoints import build_unet, build_vae, load_checkpoint, slim_checkpoint
from generators.voxel.data_cache import load_voxel_data
from generators.voxel.settings import VoxelSettings
from generators.voxel.train_unet import train_unet
from generators.voxel.train_vae import train_vae
from generators.voxel.training_settings import GeneratorSettings

N = 16


@pytest.fixture(scope="module")
def data(small_csv, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return load_voxel_data(
        str(small_csv), voxel=VoxelSettings(n_grid=N), cache_dir=cache, progress=False
    )


def tiny_settings(**kw) -> GeneratorSettings:
    base = dict(
        unet_channels=(4, 8),
        unet_lr=1e-2,
        unet_batch=5,
        unet_epochs=1,
        vae_channels=(4, 8, 8),
        latent_dim=8,
        vae_lr=3e-3,
        vae_batch=5,
        vae_epochs=1,
        val_every=1000,
        val_max=10,
        threads=1,
        val_fraction=0.2,
    )
    return GeneratorSettings(**(base | kw))


@pytest.fixture(scope="module")
def unet_ckpt(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("unet") / "unet.pt"
    train_unet(data, path, tiny_settings(unet_epochs=4), progress=False, log=lambda m: None)
    return path


def test_data_are_encoded_cached_and_split(data, small_csv, tmp_path):
    assert len(data) == 30
    assert data.density.shape == (30, N, N, N) and data.species.dtype == np.int16
    assert np.all(np.isfinite(data.values))  # heat_ref -> formation_energy_per_atom
    assert data.ids[0].startswith("perov_small:")
    again = load_voxel_data(
        str(small_csv), voxel=VoxelSettings(n_grid=N), cache_dir=tmp_path, progress=False
    )
    cached = load_voxel_data(
        str(small_csv), voxel=VoxelSettings(n_grid=N), cache_dir=tmp_path, progress=False
    )
    assert again.data_hash == cached.data_hash == data.data_hash
    assert np.array_equal(cached.species, data.species)
    train, val = split_indices(data.ids, 0.2, seed=0)
    assert len(val) == 6 and len(train) == 24 and not set(train) & set(val)
    assert np.array_equal(split_indices(data.ids, 0.2, 0)[1], val)  # deterministic
    assert not np.array_equal(split_indices(data.ids, 0.2, 1)[1], val)


def test_decile_edges_and_assignment():
    values = np.arange(100, dtype=float)
    edges = decile_edges(values, 10)
    assert len(edges) == 9
    deciles = assign_deciles(values, edges)
    assert deciles.min() == 0 and deciles.max() == 9
    assert np.all(np.bincount(deciles) == 10)
    with pytest.raises(ValueError, match="at least 10"):
        decile_edges(np.arange(5.0), 10)


def test_unet_training_lowers_the_loss_and_resumes(data, tmp_path):
    settings = tiny_settings()
    path = tmp_path / "unet.pt"
    first = train_unet(data, path, settings, progress=False, log=lambda m: None)
    longer = tiny_settings(unet_epochs=6)
    more = train_unet(data, path, longer, resume=path, progress=False, log=lambda m: None)
    assert more.steps > first.steps
    assert more.metrics["val_loss"] < first.metrics["val_loss"]
    state = load_checkpoint(path, "unet")
    for key in ("config", "elements", "density_scale", "data", "metrics", "settings"):
        assert key in state
    assert state["data"]["hash"] == data.data_hash and state["data"]["n_val"] == 6
    assert state["elements"] == sorted(state["elements"]) and 8 in state["elements"]  # O
    assert len(state["metrics"]["history"]) >= 2


def test_training_is_deterministic(data, tmp_path):
    a = train_unet(data, tmp_path / "a.pt", tiny_settings(), progress=False, log=lambda m: None)
    b = train_unet(data, tmp_path / "b.pt", tiny_settings(), progress=False, log=lambda m: None)
    va = load_checkpoint(a.path)["model_version"]
    assert va == load_checkpoint(b.path)["model_version"]


def test_vae_training_lowers_the_loss(data, unet_ckpt, tmp_path):
    path = tmp_path / "vae.pt"
    first = train_vae(data, unet_ckpt, path, tiny_settings(), progress=False, log=lambda m: None)
    more = train_vae(
        data,
        unet_ckpt,
        path,
        tiny_settings(vae_epochs=8),
        resume=path,
        progress=False,
        log=lambda m: None,
    )
    assert more.metrics["val_total"] < first.metrics["val_total"]
    assert more.metrics["val_perceptual"] > 0  # the frozen UNet's features are in the loss
    state = load_checkpoint(path, "vae")
    assert len(state["decile_edges"]) == 9 and state["property"] == "formation_energy_per_atom"
    assert state["unet_version"] == load_checkpoint(unet_ckpt)["model_version"]


def test_vae_warm_up_without_unet_then_with_it(data, unet_ckpt, tmp_path):
    path = tmp_path / "vae.pt"
    warm = train_vae(data, None, path, tiny_settings(), progress=False, log=lambda m: None)
    assert warm.metrics["val_perceptual"] == 0
    train_vae(
        data,
        unet_ckpt,
        path,
        tiny_settings(vae_epochs=2),
        resume=path,
        progress=False,
        log=lambda m: None,
    )
    phases = load_checkpoint(path)["phases"]
    assert [p["alpha"] for p in phases] == [0.0, 1.0]


def test_a_shipped_vae_continues_with_batch_norm_frozen(data, unet_ckpt, tmp_path):
    """A slim checkpoint (weights only, as shipped) resumes with a fresh optimizer from its
    step count, and with frozen batch norm the running statistics stay what they were while
    the weights move and the held-out loss falls."""
    path = tmp_path / "vae.pt"
    first = train_vae(data, unet_ckpt, path, tiny_settings(), progress=False, log=lambda m: None)
    slim = tmp_path / "slim.pt"
    torch.save(slim_checkpoint(load_checkpoint(path, "vae")), slim)
    before = load_checkpoint(slim, "vae")["state_dict"]
    lines: list[str] = []
    more = train_vae(
        data,
        unet_ckpt,
        tmp_path / "more.pt",
        tiny_settings(vae_epochs=6, vae_freeze_batchnorm=True),
        resume=slim,
        progress=False,
        log=lines.append,
    )
    assert any("optimizer state starts fresh" in line for line in lines)
    assert more.steps > first.steps  # continues the count: 4 batches per epoch, epochs 1..5
    after = load_checkpoint(tmp_path / "more.pt", "vae")
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after["state_dict"][k]) for k in stats)
    weights = [k for k in before if k.endswith("weight")]
    assert any(not torch.equal(before[k], after["state_dict"][k]) for k in weights)
    assert more.metrics["val_total"] < first.metrics["val_total"]
    assert after["phases"][-1]["frozen_batchnorm"] is True


def test_checkpoint_round_trip(data, unet_ckpt, tmp_path):
    state = load_checkpoint(unet_ckpt, "unet")
    model = build_unet(state)
    x = torch.from_numpy(data.density[:2] / state["density_scale"]).float().unsqueeze(1)
    with torch.no_grad():
        before = model(x)[0]
    slim = slim_checkpoint(state)
    assert "optimizer" not in slim
    torch.save(slim, tmp_path / "slim.pt")
    with torch.no_grad():
        after = build_unet(load_checkpoint(tmp_path / "slim.pt", "unet"))(x)[0]
    assert torch.equal(before, after)
    half = slim_checkpoint(state, half=True)
    with torch.no_grad():
        approx = build_unet(half)(x)[0]
    assert torch.allclose(before, approx, atol=0.05)
    vae_path = tmp_path / "vae.pt"
    train_vae(data, unet_ckpt, vae_path, tiny_settings(), progress=False, log=lambda m: None)
    vae = build_vae(load_checkpoint(vae_path, "vae"))
    assert vae.config.latent_dim == 8 and vae.config.n_grid == N


def test_missing_and_wrong_checkpoints_are_clear_errors(unet_ckpt, tmp_path, data):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="holds a unet checkpoint, expected vae"):
        load_checkpoint(unet_ckpt, "vae")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own unpickling error
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        train_vae(
            data,
            tmp_path / "missing-unet.pt",
            tmp_path / "v.pt",
            tiny_settings(),
            progress=False,
            log=lambda m: None,
        )
