"""Configuration of the voxel representation (one pydantic-settings object, env CRYSTALLOOP_VOXEL_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class VoxelSettings(BaseSettings):
    """Grid size and the rules that make encode -> decode lossless.

    Lengths in Angstrom unless the name says voxels. Defaults are the ones the round-trip
    benchmark (benchmarks/voxel_roundtrip.py) was measured with.
    """

    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_VOXEL_", extra="ignore")

    n_grid: int = Field(32, ge=4, description="voxels per cell edge (the paper uses 32)")
    max_atoms: int = Field(40, ge=1, description="largest cell (sites) the encoder accepts")
    min_distance: float = Field(
        0.5, gt=0, description="sites closer than this (A) make a decoded crystal invalid"
    )
    length_tolerance: float = Field(
        1e-3, gt=0, description="relative |a-b|,|a-c| accepted as a cubic cell"
    )
    angle_tolerance: float = Field(0.1, gt=0, description="degrees from 90 accepted as cubic")
    density_width_scale: float = Field(
        1.0, gt=0, description="Gaussian width of the density = scale x ionic radius"
    )
    min_radius: float = Field(
        0.3,
        gt=0,
        description="floor (A) on a tabulated radius: Shannon radii of small cations (H+, C4+) "
        "are tiny or negative, which would make a zero-width Gaussian",
    )
    label_radius_scale: float = Field(
        1.0, gt=0, description="species-matrix label radius is at most scale x ionic radius"
    )
    label_gap_voxels: float = Field(
        1.0,
        ge=0,
        description="label spheres of neighbouring atoms are shrunk (in proportion to their "
        "ionic radii) until this many voxels of empty space separate them, so every atom "
        "owns a compact, unshared region whose centroid is its position",
    )
    min_label_radius_voxels: float = Field(
        1.5,
        gt=0,
        description="floor on the label radius so every atom owns a few voxels; only atoms "
        "closer than ~2 floors + gap can then share a boundary (nearest atom wins)",
    )
    marker_smoothing_voxels: float = Field(
        1.0,
        ge=0,
        description="decode: Gaussian smoothing (voxels) of each component's distance map "
        "before its maxima become watershed markers; removes the shallow extra maxima that "
        "make a generated blob of two touching atoms split into three (no effect on encoded "
        "grids, whose components are single discrete balls)",
    )
    denoise: bool = Field(
        True,
        description="decode: before segmenting, drop isolated occupied voxels, fill enclosed "
        "empty voxels, and relabel voxels whose species is (almost) alone in their 3x3x3 "
        "neighbourhood by the neighbourhood majority. Leaves an encoded (clean) grid unchanged; "
        "stops salt noise in a generated grid from splitting atoms",
    )
    min_region_voxels: int = Field(
        4,
        ge=1,
        description="decode: a region with fewer voxels is noise: it joins the region it "
        "touches most (and loses the species vote there) or, if isolated, is dropped. An "
        "encoded atom owns at least ~8 voxels (min_label_radius_voxels=1.5)",
    )
