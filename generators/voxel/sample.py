"""Sampling crystals from the trained voxel generator: latent -> VAE decoder -> UNet -> decode.

Every mode (random, targeted, interpolation) ends in one batched pipeline, `decode_latents`, so
the daemon gets many candidates per forward pass. Each candidate records the model version, the
condition, its own RNG seed (one seed per candidate, so any single candidate can be regenerated)
and its latent vector.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from generators.candidate import Candidate, Provenance
from generators.splits import assign_deciles
from generators.voxel.checkpoints import build_unet, build_vae, load_checkpoint
from generators.voxel.inputs import model_species, vae_input
from generators.voxel.settings import VoxelSettings
from generators.voxel.unet import classify_voxels
from generators.voxel.unet_decode import (
    Generated,
    cubic_length,
    decode_generated,
    decode_voxels,
    vote_regions,
)
from generators.voxel.vae import one_hot_decile

GENERATOR_NAME = "voxel-vae"
SPECIES_MODES = ("vote", "charge-balanced")
DECODERS = ("auto", "unet", "vae")
PRIORS = ("auto", "standard", "fitted", "kde")
TOP_K = 4  # classes per voxel kept for the joint assignment (generators.voxel.assign)


def default_model_dir() -> Path:
    """The shipped default checkpoints (package data of generators.voxel.models)."""
    return Path(str(resources.files("generators.voxel.models")))


def checkpoint_paths(
    path: str | Path | None = None, unet_path: str | Path | None = None
) -> tuple[Path, Path]:
    """(VAE, UNet) checkpoint files of a model given as a directory holding vae.pt and
    unet.pt, or as a VAE file (its UNet `unet_path` or the unet.pt beside it); None = the
    shipped default. A missing file is an error that says how to make one."""
    path = default_model_dir() if path is None else Path(path)
    if path.is_dir():
        vae_path, unet_default = path / "vae.pt", path / "unet.pt"
    else:
        vae_path, unet_default = path, path.parent / "unet.pt"
    unet = Path(unet_path) if unet_path is not None else unet_default
    for p, what in ((vae_path, "VAE"), (unet, "UNet")):
        if not p.is_file():
            raise FileNotFoundError(
                f"{what} checkpoint not found: {p}. Train one with "
                f"`crystalloop train {'vae' if what == 'VAE' else 'unet'}`, or load the "
                "shipped default with VoxelGenerator.load()"
            )
    return vae_path, unet


class Segmentation(NamedTuple):
    """Species classifier output of a batch (the UNet's, or the VAE species head's): Z and
    confidence per voxel, coordinates, and with a joint species assignment the top classes
    (Z) and probabilities of every voxel."""

    species: np.ndarray
    confidence: np.ndarray
    coords: np.ndarray
    top: tuple[np.ndarray, np.ndarray] | None = None


class VoxelGenerator:
    """A trained VAE + UNet pair that turns latent vectors into crystals.

    `decoder` picks what reads a generated grid's sites and elements: "unet" is the paper's
    path (the UNet segments the reconstructed density), "vae" the VAE's own species head
    (a VAE trained with `--species-head`); "auto" takes the head when the VAE has one.
    """

    def __init__(
        self,
        vae_state: dict[str, Any],
        unet_state: dict[str, Any],
        voxel_settings: VoxelSettings | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        region_vote: bool = True,
        workers: int = 1,
        prior: str = "auto",
        species: str = "charge-balanced",
        decoder: str = "auto",
        bandwidth: float | None = None,
    ):
        if vae_state.get("unet_version") not in (None, unet_state["model_version"]):
            # Allowed (a UNet can be retrained), but the pairing is worth knowing.
            self.note = (
                f"VAE was trained with UNet {vae_state['unet_version']}, "
                f"using {unet_state['model_version']}"
            )
        else:
            self.note = ""
        self.device = torch.device(device)
        # channels-last 3-D layout: oneDNN's 3-D convolutions run 1.3-1.7x faster in it on
        # this CPU (measured on 64 sampled grids: VAE decoder 0.43 -> 0.25 s, UNet 1.43 ->
        # 1.08 s, identical labels); results are unchanged to float rounding
        layout = torch.channels_last_3d
        self.vae = build_vae(vae_state).to(self.device, memory_format=layout)
        self.unet = build_unet(unet_state).to(self.device, memory_format=layout)
        self.vae_state = vae_state
        self.unet_state = unet_state
        self.elements = np.asarray([0, *unet_state["elements"]], dtype=np.int64)
        has_head = bool(self.vae.config.species_classes)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if decoder == "vae" and not has_head:
            raise ValueError(
                "decoder='vae' needs a VAE with a species head (`crystalloop train vae "
                "--species-head`); this checkpoint has none: use decoder='unet'"
            )
        self.decoder = ("vae" if has_head else "unet") if decoder == "auto" else decoder
        if has_head:  # the head's classes are the VAE's element list
            self.head_elements = np.asarray([0, *vae_state["elements"]], dtype=np.int64)
        self.density_scale = float(vae_state["density_scale"])
        self.coord_scale = float(vae_state["coord_scale"])
        self.property: str = vae_state["property"]
        self.decile_edges = np.asarray(vae_state["decile_edges"], dtype=np.float64)
        self.n_deciles = int(self.vae.config.n_conditions)
        self.latent_dim = int(self.vae.config.latent_dim)
        self.n_grid = int(self.vae.config.n_grid)
        stored = vae_state.get("voxel") or {}
        # decoding settings tuned for this model (generators.voxel.decode_tuning), if any
        tuned = (vae_state.get("decoding") or {}).get("settings") or {}
        self.voxel_settings = voxel_settings or VoxelSettings(
            **(stored | tuned | {"n_grid": self.n_grid})
        )
        if self.voxel_settings.n_grid != self.n_grid:
            raise ValueError(
                f"model works on a {self.n_grid}^3 grid, voxel settings say "
                f"{self.voxel_settings.n_grid}"
            )
        self.batch_size = batch_size
        self.region_vote = region_vote
        if species not in SPECIES_MODES:
            raise ValueError(f"species must be one of {SPECIES_MODES}, got {species!r}")
        if species == "charge-balanced" and not region_vote:
            raise ValueError("species='charge-balanced' assigns per region: it needs region_vote")
        self.species = species
        self.latent_prior = vae_state.get("latent_prior")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if prior in ("fitted", "kde") and self.latent_prior is None:
            raise ValueError(
                "this VAE checkpoint has no fitted latent prior: add one with "
                "`crystalloop train prior`, or sample with prior='standard' (N(0, I))"
            )
        kde = (self.latent_prior or {}).get("kde")
        if prior == "kde" and kde is None:
            raise ValueError(
                "this VAE checkpoint's prior has no per-decile kernel density: re-fit it with "
                "`crystalloop train prior`, or sample with prior='fitted'"
            )
        if prior == "auto":
            prior = "standard" if self.latent_prior is None else "kde" if kde else "fitted"
        self.prior = prior
        if bandwidth is not None and prior != "kde":
            raise ValueError(f"bandwidth applies to prior='kde' only (this one is {prior!r})")
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        self.bandwidth = float(bandwidth or kde["bandwidth"]) if prior == "kde" else None
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = int(workers)
        self._pool: ProcessPoolExecutor | None = None
        self.model_version = f"vae-{vae_state['model_version']}+unet-{unet_state['model_version']}"

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        unet_path: str | Path | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> VoxelGenerator:
        """Load a generator; `path` None = the shipped default model.

        `path` may be a directory holding vae.pt and unet.pt, or a VAE checkpoint file (its
        UNet is `unet_path` or the unet.pt beside it).
        """
        vae_path, unet_path = checkpoint_paths(path, unet_path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(
            load_checkpoint(vae_path, "vae"),
            load_checkpoint(unet_path, "unet"),
            device=device,
            **kwargs,
        )

    # ------------------------------------------------------------------------- conditions

    def decile_of(self, value: float) -> int:
        """The condition class of a property value (edges stored with the model)."""
        return int(assign_deciles(np.asarray([value]), self.decile_edges)[0])

    def decile_range(self, decile: int) -> tuple[float | None, float | None]:
        self._check_decile(decile)
        lo = None if decile == 0 else float(self.decile_edges[decile - 1])
        hi = None if decile == self.n_deciles - 1 else float(self.decile_edges[decile])
        return lo, hi

    def _check_decile(self, decile: int) -> None:
        if not isinstance(decile, (int, np.integer)) or not 0 <= int(decile) < self.n_deciles:
            raise ValueError(
                f"condition decile must be an integer in 0..{self.n_deciles - 1} "
                f"(deciles of {self.property}), got {decile!r}"
            )

    def _condition(self, decile: int, **extra: Any) -> dict[str, Any]:
        lo, hi = self.decile_range(decile)
        return {"property": self.property, "decile": int(decile), "range": [lo, hi]} | extra

    # --------------------------------------------------------------------------- pipeline

    def encode_grids(self, structures: Sequence[Structure]) -> tuple[torch.Tensor, np.ndarray]:
        """(B,4,n,n,n) VAE input of cubic structures (raises VoxelEncodingError otherwise)."""
        from generators.voxel.encode import encode_many

        batch = encode_many(list(structures), self.voxel_settings, with_coords=False)
        x = vae_input(
            batch.density,
            batch.lattice[:, 0],
            self.density_scale,
            self.coord_scale,
            model_species(self.vae.config, batch.species),
        )
        return x, batch.species

    @torch.no_grad()
    def encode(
        self, structures: Sequence[Structure], deciles: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of each structure under its condition."""
        for d in deciles:
            self._check_decile(int(d))
        x, _ = self.encode_grids(structures)
        cond = one_hot_decile(list(deciles), self.n_deciles).to(self.device)
        return self.vae.encode(x.to(self.device), cond)

    @torch.no_grad()
    def segment(self, grids: torch.Tensor) -> Segmentation:
        """UNet on (B,4,n,n,n) grids -> species Z, confidence, coordinates (B,n,n,n,3) in A,
        and the top classes per voxel when species are assigned jointly."""
        density = grids[:, :1].to(self.device)
        return self._segmentation(
            lambda top_k: self.unet.predict(density, top_k=top_k), self.elements, grids
        )

    @torch.no_grad()
    def decode_segment(
        self, z: torch.Tensor, condition: torch.Tensor
    ) -> tuple[torch.Tensor, Segmentation]:
        """Decoder on latents -> (reconstructed grids, their segmentation by `self.decoder`)."""
        z, condition = z.to(self.device), condition.to(self.device)
        if self.decoder == "unet":
            grids = self.vae.decode(z, condition)
            return grids, self.segment(grids)
        grids, feats = self.vae.decode_species(z, condition)
        head = self.vae.species_head
        return grids, self._segmentation(
            lambda top_k: classify_voxels(feats, head, top_k), self.head_elements, grids
        )

    def _segmentation(self, predict, elements: np.ndarray, grids: torch.Tensor) -> Segmentation:
        """One classifier's output (`predict(top_k)`, `classify_voxels`'s layout) as Z grids,
        with the top classes when species are assigned jointly."""
        top = None
        if self.species == "charge-balanced":
            labels, confidence, (classes, weights) = predict(TOP_K)
            top = (elements[classes.long().cpu().numpy()], weights.float().cpu().numpy())
        else:
            labels, confidence = predict(0)
        species = elements[labels.cpu().numpy()]
        coords = (grids[:, 1:4] * self.coord_scale).permute(0, 2, 3, 4, 1).cpu().numpy()
        return Segmentation(species, confidence.cpu().numpy(), coords, top)

    def decode_grids(self, grids: torch.Tensor) -> list[Generated]:
        """Segment and decode generated grids into crystals (one per grid)."""
        return [f.result() for f in self._submit(decode_generated, self.segment(grids))]

    def map_decode(self, segmentation: Segmentation) -> list[Any]:
        """`decode_voxels` over a batch (B,n,n,n), in the worker pool when there is one."""
        return [f.result() for f in self._submit(decode_voxels, segmentation)]

    def _submit(self, fn, segmentation: Segmentation):
        """Futures of fn(one grid's UNet output), from the worker pool or computed inline."""
        pool = self._decoding_pool()
        futures: list[Future] = []
        species, confidence, coords, top = segmentation
        for i, (s, p, c) in enumerate(zip(species, confidence, coords, strict=True)):
            args = (
                s.astype(np.int16),
                p,
                cubic_length(c),
                self.voxel_settings,
                self.region_vote,
                None if top is None else (top[0][i], top[1][i]),
            )
            if pool is None:
                future: Future = Future()
                future.set_result(fn(*args))
            else:
                future = pool.submit(fn, *args)
            futures.append(future)
        return futures

    def _decoding_pool(self) -> ProcessPoolExecutor | None:
        """Worker processes for decoding (scipy/scikit-image, single-threaded), made on first use.

        Decoding is most of a sample's CPU time; with workers the networks of the next batch run
        while the pool segments the previous one.
        """
        if self.workers <= 1:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self._pool

    def close(self) -> None:
        """Shut the decoding workers down (also done at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def vote_regions(self, species: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """Species after the per-region vote (see `vote_regions`)."""
        return vote_regions(species, confidence, self.voxel_settings)[0]

    @torch.no_grad()
    def decode_latents(
        self, z: torch.Tensor, condition: torch.Tensor
    ) -> tuple[list[Generated], torch.Tensor]:
        """Batched decoder -> species (UNet or head) -> decode. `condition` is (B, n_deciles)."""
        futures: list[Future] = []
        grids = []
        for start in range(0, len(z), self.batch_size):
            g, seg = self.decode_segment(
                z[start : start + self.batch_size], condition[start : start + self.batch_size]
            )
            grids.append(g.cpu())
            futures.extend(self._submit(decode_generated, seg))
        return [f.result() for f in futures], torch.cat(grids) if grids else torch.empty(0)

    def _candidate(
        self,
        gen: Generated,
        mode: str,
        condition: dict,
        seed: int | None,
        z: torch.Tensor,
        base_id: str | None = None,
        extra: dict | None = None,
    ) -> Candidate:
        from generators.metrics import is_valid

        structure = gen.structure
        decoded = structure is not None
        if structure is None:  # keep the slot: callers see how many samples failed
            a = float(gen.lattice.mean()) if np.all(gen.lattice > 0) else 1.0
            structure = Structure(Lattice.cubic(a), [], [])
        ok = decoded and not gen.too_close and is_valid(structure, self.voxel_settings.min_distance)
        return Candidate(
            structure=structure,
            provenance=Provenance(
                generator=GENERATOR_NAME,
                model_version=self.model_version,
                mode=mode,
                condition=condition,
                seed=seed,
                latent=[round(float(v), 5) for v in z.tolist()],
                base_id=base_id,
                extra={
                    "n_sites": gen.n_sites,
                    "too_close": len(gen.too_close),
                    "dropped_regions": gen.dropped_regions,
                    "lattice": [float(x) for x in gen.lattice],
                    "species": self.species,
                    "decoder": self.decoder,
                }
                | ({"assignment": gen.assignment} if gen.assignment else {})
                | (extra or {}),
            ),
            validity={"decoded": decoded, "min_distance": bool(ok)},
        )

    # ------------------------------------------------------------------------------ modes

    @staticmethod
    def _seeds(n: int, seed: int | None) -> list[int]:
        base = secrets.randbits(31) if seed is None else int(seed)
        return [base + i for i in range(n)]

    def _noise(self, seeds: list[int]) -> torch.Tensor:
        out = torch.empty(len(seeds), self.latent_dim)
        for i, s in enumerate(seeds):
            out[i] = torch.randn(self.latent_dim, generator=torch.Generator().manual_seed(s))
        return out

    def sample_random(self, n: int, decile: int, seed: int | None = None) -> list[Candidate]:
        """Random latents under one condition decile; candidate i uses seed + i.

        z ~ N(0, I) (the paper) with prior 'standard'; with 'fitted', z = mean + L eps, the
        Gaussian fitted to the training posteriors; with 'kde', z = mu_j + h L eps around the
        posterior mean mu_j of a training crystal j of this decile drawn by the seed
        (bandwidth h; see generators.voxel.prior). The anchor's id is in the provenance.
        """
        self._check_decile(decile)
        if n < 1:
            return []
        seeds = self._seeds(n, seed)
        z = self._noise(seeds)
        anchors: list[str | None] = [None] * n
        if self.prior == "fitted":
            z = self.latent_prior["mean"] + z @ self.latent_prior["scale_tril"].T
        elif self.prior == "kde":
            z, anchors = self._kde_latents(z, seeds, decile)
        cond = one_hot_decile([decile] * n, self.n_deciles)
        gens, _ = self.decode_latents(z, cond)
        condition = self._condition(decile, prior=self.prior)
        if self.bandwidth is not None:
            condition["bandwidth"] = self.bandwidth
        return [
            self._candidate(g, "random", condition, s, zi, extra={"anchor": a} if a else None)
            for g, s, zi, a in zip(gens, seeds, z, anchors, strict=True)
        ]

    def _kde_latents(
        self, noise: torch.Tensor, seeds: list[int], decile: int
    ) -> tuple[torch.Tensor, list[str | None]]:
        kde = self.latent_prior["kde"]
        rows = np.flatnonzero(kde["deciles"].numpy() == decile)
        if rows.size == 0:
            raise ValueError(f"the kde prior holds no training crystal of decile {decile}")
        picks = [int(rows[np.random.default_rng(s).integers(rows.size)]) for s in seeds]
        means = kde["means"][picks].float()
        z = means + self.bandwidth * noise @ self.latent_prior["scale_tril"].T
        ids = kde.get("ids")
        return z, [ids[p] if ids else f"#{p}" for p in picks]

    def base_decile(self, base: Any, decile: int | None = None) -> tuple[int, str]:
        """Condition for a base compound: given > its property value > best reconstruction.

        A bare Structure carries no property, so the decile under which the VAE reconstructs it
        best (lowest MSE) is used: the condition the model itself finds most consistent.
        """
        if decile is not None:
            self._check_decile(decile)
            return int(decile), "given"
        props = getattr(base, "properties", None) or {}
        if self.property in props and props[self.property] is not None:
            return self.decile_of(float(props[self.property])), "property"
        structure = _structure_of(base)
        x, _ = self.encode_grids([structure])
        return int(self.vae.best_condition(x.to(self.device))[0]), "best-reconstruction"

    def sample_around(
        self,
        base: Any,
        n: int,
        sigma2: float = 0.5,
        decile: int | None = None,
        seed: int | None = None,
        base_id: str | None = None,
    ) -> list[Candidate]:
        """Targeted: mu(base) + N(0, sigma2 I); `base` is a Structure or a Record."""
        if sigma2 < 0:
            raise ValueError(f"sigma2 must be >= 0, got {sigma2}")
        structure = _structure_of(base)
        d, source = self.base_decile(base, decile)
        mu, _ = self.encode([structure], [d])
        seeds = self._seeds(n, seed)
        z = mu.cpu().expand(n, -1) + float(np.sqrt(sigma2)) * self._noise(seeds)
        cond = one_hot_decile([d] * n, self.n_deciles)
        gens, _ = self.decode_latents(z, cond)
        base_id = base_id or getattr(base, "source_id", None) or structure.formula
        condition = self._condition(d, source=source)
        return [
            self._candidate(g, "targeted", condition, s, zi, base_id, {"sigma2": sigma2})
            for g, s, zi in zip(gens, seeds, z, strict=True)
        ]

    def interpolate(
        self,
        a: Any,
        b: Any,
        steps: int,
        decile_a: int | None = None,
        decile_b: int | None = None,
    ) -> list[Candidate]:
        """Linear path between the posterior means of a and b; the condition is blended too."""
        if steps < 2:
            raise ValueError(f"interpolation needs steps >= 2, got {steps}")
        da, src_a = self.base_decile(a, decile_a)
        db, src_b = self.base_decile(b, decile_b)
        mu, _ = self.encode([_structure_of(a), _structure_of(b)], [da, db])
        mu = mu.cpu()
        t = torch.linspace(0, 1, steps)[:, None]
        z = (1 - t) * mu[0] + t * mu[1]
        ca, cb = one_hot_decile([da, db], self.n_deciles)
        cond = (1 - t) * ca + t * cb
        gens, _ = self.decode_latents(z, cond)
        id_a = getattr(a, "source_id", None) or _structure_of(a).formula
        id_b = getattr(b, "source_id", None) or _structure_of(b).formula
        out = []
        for i, (g, zi) in enumerate(zip(gens, z, strict=True)):
            ti = float(t[i])
            condition = self._condition(
                da if ti < 0.5 else db, blend={"from": da, "to": db, "t": ti}
            )
            out.append(
                self._candidate(
                    g,
                    "interpolation",
                    condition,
                    None,
                    zi,
                    f"{id_a}->{id_b}",
                    {"t": ti, "sources": [src_a, src_b]},
                )
            )
        return out


def _structure_of(base: Any) -> Structure:
    if isinstance(base, Structure):
        return base
    structure = getattr(base, "structure", None)
    if isinstance(structure, Structure):
        return structure
    raise TypeError(f"expected a pymatgen Structure or a Record, got {type(base).__name__}")
