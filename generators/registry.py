"""The generators a user can name, and one way to load each.

Why: the campaign file, `crystalloop sample`, `reconstruct` and `evaluate generator` all
accept a generator by name; one table keeps their spellings (`voxel` / `voxel-vae`,
`fingerprint`) and loading rules the same everywhere.
"""

from __future__ import annotations

from typing import Any

ALIASES = {"voxel": "voxel-vae", "voxel-vae": "voxel-vae", "fingerprint": "fingerprint"}


def canonical(name: str) -> str:
    """The campaign name of a generator ('voxel' -> 'voxel-vae'); ValueError for others."""
    try:
        return ALIASES[name]
    except KeyError:
        raise ValueError(f"unknown generator {name!r}: use {', '.join(sorted(ALIASES))}") from None


def load_generator(name: str, checkpoint: str | None = None, **options: Any) -> Any:
    """A loaded generative model with `sample_random`, `sample_around` and `interpolate`."""
    kind = canonical(name)
    if kind == "voxel-vae":
        from generators.voxel.sample import VoxelGenerator

        return VoxelGenerator.load(checkpoint, **options)
    from generators.fingerprint.sample import FingerprintGenerator

    return FingerprintGenerator.load(checkpoint, **options)
