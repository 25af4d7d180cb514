"""Shapes and loss terms of the voxel UNet and DFC-VAE (tiny models, real encoded crystals)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from generators.data import read_table
from generators.voxel.encode import encode, encode_many
from generators.voxel.inputs import class_lookup, coordinate_channels
from generators.voxel.losses import class_weights, kld, perceptual, unet_loss, vae_loss
from generators.voxel.rotations import rotate_spatial, rotate_structure
from generators.voxel.settings import VoxelSettings
from generators.voxel.unet import UNet3D, UNetConfig, periodic_max
from generators.voxel.vae import ConditionalVAE, VAEConfig, one_hot_decile

N = 16  # a 16^3 grid keeps these tests fast; the models are grid-size agnostic


@pytest.fixture(scope="module")
def perovskites(perov_csv, tmp_path_factory):
    """The first real perovskites of perov_5 (a small copy of the file keeps reading fast)."""
    small = tmp_path_factory.mktemp("perov") / "first.csv"
    pd.read_csv(perov_csv, nrows=4).to_csv(small, index=False)
    records, _ = read_table(small)
    return records


@pytest.fixture(scope="module")
def batch(perovskites):
    settings = VoxelSettings(n_grid=N)
    grids = encode_many([r.structure for r in perovskites], settings, with_coords=False)
    density = torch.from_numpy(grids.density / grids.density.max()).unsqueeze(1)
    return density, grids.species.astype(np.int64), torch.from_numpy(grids.lattice[:, 0])


def test_unet_shapes_and_hidden_layers(batch):
    density, _, _ = batch
    model = UNet3D(UNetConfig(n_classes=5, channels=(4, 8, 16))).eval()
    logits, occupancy, hidden = model(density, return_hidden=True)
    assert logits.shape == (4, 5, N, N, N)
    assert occupancy.shape == (4, N, N, N)
    # encoder at N, N/2, N/4 and decoder back at N/2, N
    assert [h.shape[-1] for h in hidden] == [N, N // 2, N // 4, N // 2, N]
    assert [f.shape for f in model.features(density)] == [h.shape for h in hidden[:3]]
    labels, confidence = model.predict(density)
    assert labels.shape == (4, N, N, N) and labels.max() < 5 and labels.min() >= 0
    assert torch.all((confidence >= 0) & (confidence <= 1))


def test_unet_stem_pool_variant(batch):
    """The CPU variant convolves at n/2 and below but still labels every voxel."""
    density, _, _ = batch
    model = UNet3D(UNetConfig(n_classes=4, channels=(8, 16), stem_pool=True)).eval()
    logits, occupancy, hidden = model(density, return_hidden=True)
    assert logits.shape == (4, 4, N, N, N) and occupancy.shape == (4, N, N, N)
    assert [h.shape[-1] for h in hidden] == [N // 2, N // 4, N // 2, N]
    assert [f.shape[-1] for f in model.features(density)] == [N // 2, N // 4]


def test_unet_predict_matches_the_full_head(batch):
    """predict() evaluates species logits only on occupied voxels; same answer as forward()."""
    density, _, _ = batch
    torch.manual_seed(0)
    model = UNet3D(UNetConfig(n_classes=6, channels=(8, 16), stem_pool=True)).eval()
    with torch.no_grad():
        _, occupancy = model(density)
        model.head.bias[-1] -= occupancy.median()  # about half the voxels occupied
        logits, occupancy = model(density)
        labels, confidence = model.predict(density)
    occupied = occupancy > 0
    assert 0 < occupied.float().mean() < 1
    p_best, idx = torch.softmax(logits[:, 1:], dim=1).max(dim=1)
    p_occ = torch.sigmoid(occupancy)
    assert torch.equal(labels, torch.where(occupied, idx + 1, torch.zeros_like(idx)))
    expected = torch.where(occupied, p_best * p_occ, 1 - p_occ)
    assert torch.allclose(confidence, expected, atol=1e-6)


def test_peak_windows_are_exact_window_maxima(batch):
    """The chained window maxima equal direct periodic k-window maxima."""
    density, _, _ = batch
    model = UNet3D(UNetConfig(n_classes=3, channels=(4, 8), peak_windows=(3, 5, 9)))
    inputs = model._inputs(density)
    for i, k in enumerate((3, 5, 9)):
        assert torch.equal(inputs[:, 3 + 2 * i : 4 + 2 * i], periodic_max(density, k))


def test_periodic_max_equals_rolled_maxima():
    """The separable window max wraps around the cell like a max over every periodic shift."""
    x = torch.rand(2, 1, 7, 7, 7)
    shifts = range(-2, 3)
    expected = torch.stack(
        [x.roll((a, b, c), dims=(2, 3, 4)) for a in shifts for b in shifts for c in shifts]
    ).amax(dim=0)
    assert torch.equal(periodic_max(x, 5), expected)


def test_unet_is_periodic(batch):
    """Circular padding: translating the crystal by whole pooling cells translates the output."""
    density, _, _ = batch
    model = UNet3D(UNetConfig(n_classes=3, channels=(4, 8))).eval()
    with torch.no_grad():
        a, _ = model(density)
        b, _ = model(torch.roll(density, shifts=4, dims=2))
    assert torch.allclose(torch.roll(a, shifts=4, dims=2), b, atol=1e-5)


def test_vae_shapes_condition_and_bad_grid(batch):
    density, _, lattice = batch
    x = torch.cat([density, coordinate_channels(lattice, N, 8.0)], dim=1)
    config = VAEConfig(n_grid=N, latent_dim=12, channels=(4, 8, 8))
    model = ConditionalVAE(config).train()
    cond = one_hot_decile([0, 3, 9, 5])
    recon, mu, logvar = model(x, cond)
    assert recon.shape == x.shape == (4, 4, N, N, N)
    assert mu.shape == logvar.shape == (4, 12)
    model.eval()
    with torch.no_grad():  # the decoder really uses the condition
        z = torch.zeros(2, 12)
        out = model.decode(z, one_hot_decile([0, 9]))
    assert not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="divisible"):
        ConditionalVAE(VAEConfig(n_grid=18, channels=(4, 8, 8)))


def test_condition_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match=r"0\.\.9.*\[10\]"):
        one_hot_decile([1, 10])
    with pytest.raises(ValueError, match="0..9"):
        one_hot_decile([-1])


def test_coordinate_channels_follow_the_encoder_grid(perovskites):
    grid = encode(perovskites[0].structure, VoxelSettings(n_grid=N))
    channels = coordinate_channels(torch.tensor([float(grid.lattice[0])]), N, 1.0)[0]
    assert np.allclose(channels.permute(1, 2, 3, 0).numpy(), grid.coords, atol=1e-5)


def test_rotations_match_rotated_crystals(perovskites):
    """The 24 training rotations are exactly the grids of the 24 rotated crystals."""
    settings = VoxelSettings(n_grid=N)
    structure = perovskites[1].structure
    species = torch.from_numpy(encode(structure, settings).species.astype(np.int64))
    ours = {rotate_spatial(species, r).numpy().tobytes() for r in range(24)}
    truth = {
        encode(rotate_structure(structure, r), settings).species.astype(np.int64).tobytes()
        for r in range(24)
    }
    assert ours == truth
    assert len(ours) > 1


def _permute_flip_roll(x: torch.Tensor, perm, flips) -> torch.Tensor:
    """The training augmentation before it used rotations.ROTATIONS: permute the last three
    axes, then map voxel i -> -i (mod n) along each flipped axis."""
    lead = list(range(x.dim() - 3))
    x = x.permute(*lead, *(len(lead) + p for p in perm))
    for axis, flip in enumerate(flips):
        if flip:
            d = len(lead) + axis
            x = torch.roll(torch.flip(x, dims=(d,)), 1, dims=(d,))
    return x


def test_training_rotations_are_the_old_permute_flip_table(batch):
    """Rotation number r is the rotation the training augmentation applied before (the old
    (permutation, flips) table, det +1, in the same order), so a seed augments as before."""
    from itertools import permutations, product

    from generators.voxel.rotations import ROTATIONS, rotate_batch

    old = [
        (perm, flips)
        for perm in permutations(range(3))
        for flips in product((False, True), repeat=3)
        if (sum(perm[i] > perm[j] for i in range(3) for j in range(i + 1, 3)) + sum(flips)) % 2 == 0
    ]
    assert len(old) == len(ROTATIONS) == 24
    density, species, _ = batch
    species = torch.from_numpy(species)
    for r, (perm, flips) in enumerate(old):
        assert torch.equal(rotate_spatial(density, r), _permute_flip_roll(density, perm, flips))
        assert torch.equal(rotate_spatial(species, r), _permute_flip_roll(species, perm, flips))
    rotations = np.array([0, 5, 17, 23])
    rotated = rotate_batch(density, rotations)
    for b, r in enumerate(rotations):
        assert torch.equal(rotated[b], _permute_flip_roll(density[b], *old[r]))
    assert rotate_batch(density, np.zeros(4, dtype=np.int64)) is density


def test_class_weights_inverse_counts_and_empty_zero():
    w = class_weights([1000, 10, 40, 0])
    assert w[0] == 0 and w[3] == 0
    assert w[1] / w[2] == pytest.approx(4.0)
    assert w[1:3].mean() == pytest.approx(1.0)
    tempered = class_weights([1000, 10, 40, 0], power=0.5)  # counts**-0.5
    assert tempered[1] / tempered[2] == pytest.approx(2.0)
    assert tempered[0] == 0 and tempered[3] == 0


def test_unet_loss_terms(batch):
    _, species, _ = batch
    elements = sorted(int(z) for z in np.unique(species) if z > 0)
    target = torch.from_numpy(class_lookup(elements)[species])
    n_classes = len(elements) + 1
    weights = class_weights(np.bincount(target.numpy().ravel(), minlength=n_classes))
    perfect = torch.nn.functional.one_hot(target, n_classes).permute(0, 4, 1, 2, 3).float() * 50
    occ_perfect = (target > 0).float() * 100 - 50
    good = unet_loss(perfect, occ_perfect, target, weights)
    bad = unet_loss(torch.zeros_like(perfect), torch.zeros_like(occ_perfect), target, weights)
    assert set(good) == {"total", "ce", "bce"}
    assert good["total"] < 1e-6
    assert bad["ce"] == pytest.approx(np.log(n_classes), rel=1e-4)
    assert bad["bce"] == pytest.approx(np.log(2), rel=1e-4)
    assert bad["total"] == pytest.approx(float(bad["ce"] + bad["bce"]), rel=1e-5)
    # empty voxels carry no species weight: changing their logits leaves the CE unchanged
    noisy = perfect.clone().permute(0, 2, 3, 4, 1)  # channels last: index voxels by mask
    noisy[target == 0] = torch.randn_like(noisy[target == 0])
    noisy = noisy.permute(0, 4, 1, 2, 3)
    assert unet_loss(noisy, occ_perfect, target, weights)["ce"] == pytest.approx(
        float(good["ce"]), abs=1e-5
    )


def test_vae_loss_terms(batch):
    density, _, lattice = batch
    x = torch.cat([density, coordinate_channels(lattice, N, 8.0)], dim=1)
    unet = UNet3D(UNetConfig(n_classes=3, channels=(4, 8))).eval()
    mu, logvar = torch.zeros(4, 6), torch.zeros(4, 6)
    assert kld(mu, logvar) == 0
    assert kld(torch.ones(4, 6), logvar) == pytest.approx(3.0)
    same = vae_loss(x, x, mu, logvar, alpha=1.0, beta=0.5, features=unet.features)
    assert float(same["total"]) == 0 and float(same["perceptual"]) == 0
    recon = x + 0.1
    parts = vae_loss(recon, x, torch.ones(4, 6), logvar, 2.0, 0.5, unet.features)
    assert parts["mse"] == pytest.approx(0.01 * 4 * N**3, rel=1e-4)
    assert parts["perceptual"] > 0
    expected = parts["mse"] + 0.5 * parts["kld"] + 2.0 * parts["perceptual"]
    assert float(parts["total"]) == pytest.approx(float(expected), rel=1e-5)
    # the perceptual term sends gradients to the reconstruction only
    r = recon.clone().requires_grad_(True)
    perceptual(unet.features, r[:, :1], x[:, :1]).backward()
    assert r.grad is not None and r.grad[:, 0].abs().sum() > 0 and r.grad[:, 1:].abs().sum() == 0
