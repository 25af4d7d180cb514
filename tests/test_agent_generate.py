"""The generate phase: what a cycle stores of its generators' output."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from agent.components import ComponentError, Components, GeneratorSlot
from agent.config import CampaignConfig, GeneratorConfig
from agent.loop import CampaignRunner
from agent.store import Store
from generators.candidate import Candidate, Provenance


def test_undecodable_samples_are_counted_not_stored(crystalloop_home):
    """A sample with no sites (a voxel grid that decoded to nothing) must not reach the store,
    where every later phase rebuilds a pymatgen Structure from it."""
    config = CampaignConfig.model_validate({"name": "gen-test"})
    store = Store.connect()
    store.ensure_campaign(config.name, config.model_dump(mode="json"))
    components = Components(config)
    rock_salt = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.2), ["Mg", "O"], [[0] * 3, [0.5] * 3]
    )
    provenance = Provenance(generator="voxel-vae", model_version="test", mode="random")
    components.generate = lambda seed: [  # what VoxelGenerator returns for an empty grid
        Candidate(structure=Structure(Lattice.cubic(4.0), [], []), provenance=provenance),
        Candidate(structure=rock_salt, provenance=provenance),
    ]
    runner = CampaignRunner(config, store, components, report=lambda m: None)
    assert runner.phase_generate(1) == "screen"
    docs = store.find_candidates(config.name, "generated", cycle=1)
    assert len(docs) == 1
    assert Store.structure_of(docs[0]).composition.reduced_formula == "MgO"
    (cycle,) = store.cycles(config.name)
    assert cycle["generated"] == 1 and cycle["undecoded"] == 1
    store.close()


def test_voxel_deciles_draw_different_latents():
    """Each decile's candidates use their own seeds: no latent is shared between deciles."""
    slot = GeneratorSlot(
        GeneratorConfig.model_validate(
            {"name": "voxel-vae", "candidates_per_cycle": 8, "deciles": [0, 1]}
        )
    )
    candidates = slot.sample(seed=5)
    latents = {tuple(np.round(c.provenance.latent, 4)) for c in candidates}
    assert len(candidates) == 8 and len(latents) == 8
    assert {c.provenance.condition["decile"] for c in candidates} == {0, 1}


def test_voxel_options_choose_decoder_and_prior():
    """The campaign's voxel options reach the sampler: the shipped model defaults to its
    species head and the per-decile kde prior; `decoder`, `prior` and `bandwidth` override."""

    def slot(options):
        return GeneratorSlot(
            GeneratorConfig.model_validate(
                {"name": "voxel-vae", "candidates_per_cycle": 2, "options": options}
            )
        )

    default = slot({}).sample(seed=3)
    assert {c.provenance.extra["decoder"] for c in default} == {"vae"}
    assert {c.provenance.condition["prior"] for c in default} == {"kde"}
    assert all(c.provenance.extra["anchor"] for c in default)
    paper = slot({"decoder": "unet", "prior": "fitted"}).sample(seed=3)
    assert {c.provenance.extra["decoder"] for c in paper} == {"unet"}
    assert {c.provenance.condition["prior"] for c in paper} == {"fitted"}
    wide = slot({"bandwidth": 0.8}).sample(seed=3)
    assert {c.provenance.condition["bandwidth"] for c in wide} == {0.8}
    with pytest.raises(ComponentError, match="bandwidth applies to prior='kde' only"):
        slot({"prior": "fitted", "bandwidth": 0.8}).sample(seed=3)


def test_fingerprint_generator_in_a_campaign_stays_inside_its_chemical_space(crystalloop_home):
    """The shipped fingerprint model through the campaign's generate and screen phases: its
    samples carry the campaign's elements (filters.elements is the default element set), are
    charge balanced the way the funnel judges it (filters.charge_balance is on by default),
    the funnel sees them, and each stored candidate names its generator and inversion loss."""
    config = CampaignConfig.model_validate(
        {
            "name": "fp-campaign",
            "generators": [{"name": "fingerprint", "candidates_per_cycle": 6, "deciles": [0, 1]}],
            "filters": {"elements": ["Ba", "Sr", "Ti", "O"], "property_window": None},
        }
    )
    store = Store.connect()
    store.ensure_campaign(config.name, config.model_dump(mode="json"))
    runner = CampaignRunner(config, store, Components(config), report=lambda m: None)
    assert runner.phase_generate(1) == "screen"
    docs = store.find_candidates(config.name, "generated", cycle=1)
    assert 1 <= len(docs) <= 6
    for doc in docs:
        structure = Store.structure_of(doc)
        assert {e.symbol for e in structure.composition} <= {"Ba", "Sr", "Ti", "O"}
        assert doc["provenance"]["generator"] == "fingerprint"
        assert doc["provenance"]["extra"]["fingerprint_loss"] >= 0
    runner.phase_screen(1)
    after = store.find_candidates(config.name, ("pooled", "rejected"), cycle=1)
    assert len(after) == len(docs)
    assert all(d["status"] != "rejected" or d.get("filters") for d in after)
    assert not [d for d in after if "charge_balance" in (d.get("filters") or {})]
    (cycle,) = store.cycles(config.name)
    assert cycle["pooled"] + cycle["rejected"] == len(docs) == cycle["generated"]
    store.close()
