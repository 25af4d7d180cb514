"""Reconstruction of real crystals by either generator, scored as CDVAE scores it.

- fingerprint: the inversion of the crystal's own fingerprint, given only its composition
  (the lattice comes from the fingerprint, never from the crystal), one crystal at a time so
  the seconds per crystal are a latency, not a batch share;
- voxel: encode -> posterior mean -> decode, in the generator's batches (seconds are the
  batch's wall time divided by its size).
Both return, per crystal, the predicted structure (None when nothing decoded) and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymatgen.core import Structure

from generators.data.records import Record


@dataclass
class Reconstruction:
    structure: Structure | None
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def reconstruct_fingerprint(
    structures: Sequence[Structure],
    inversion: Any = None,
    progress: Callable[[int], None] | None = None,
) -> list[Reconstruction]:
    from generators.fingerprint.descriptor import FingerprintError
    from generators.fingerprint.invert import invert_many, structure_target
    from generators.fingerprint.settings import FingerprintSettings, InversionSettings

    fp_settings = FingerprintSettings()
    inversion = inversion or InversionSettings()
    out = []
    for i, s in enumerate(structures):
        start = time.perf_counter()
        try:
            target, _ = structure_target(s, fp_settings)
        except FingerprintError as exc:
            out.append(Reconstruction(None, 0.0, {"error": str(exc)}))
            continue
        result = invert_many([target], inversion, fp_settings)[0]
        out.append(Reconstruction(result.structure, time.perf_counter() - start, result.summary()))
        if progress:
            progress(i + 1)
    return out


def reconstruct_voxel(
    records: Sequence[Record],
    generator: Any,
    progress: Callable[[int], None] | None = None,
) -> list[Reconstruction]:
    import torch

    out: list[Reconstruction] = []
    prop = generator.property
    for start in range(0, len(records), generator.batch_size):
        chunk = list(records[start : start + generator.batch_size])
        t0 = time.perf_counter()
        deciles = [
            generator.decile_of(r.properties[prop])
            if prop in r.properties
            else generator.base_decile(r)[0]
            for r in chunk
        ]
        x, _ = generator.encode_grids([r.structure for r in chunk])
        cond = torch.nn.functional.one_hot(torch.as_tensor(deciles), generator.n_deciles).float()
        with torch.no_grad():
            mu, _ = generator.vae.encode(x.to(generator.device), cond.to(generator.device))
        decoded, _ = generator.decode_latents(mu, cond)
        seconds = (time.perf_counter() - t0) / len(chunk)
        out += [
            Reconstruction(d.structure, seconds, {"decile": k})
            for d, k in zip(decoded, deciles, strict=True)
        ]
        if progress:
            progress(len(out))
    return out
