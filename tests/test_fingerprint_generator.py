"""Inversion by basin hopping, the CVAE sampler in every mode, checkpoints, CLI and config."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from generators.fingerprint.descriptor import FingerprintError, fingerprint_structures
from generators.fingerprint.invert import invert, make_target, metropolis, structure_target
from generators.fingerprint.settings import InversionSettings

MATCHER = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)


def perturbed_srtio3() -> Structure:
    return Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.53, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]],
    )


def test_metropolis_accepts_and_rejects_as_specified():
    current = torch.tensor([1.0, 1.0, 1.0, 1.0, float("inf")])
    proposed = torch.tensor([0.9, 1.01, 1.01, 1.01, 5.0])
    # T = 0.01: a rise of 0.01 is accepted with probability exp(-1) = 0.3679
    uniform = torch.tensor([0.99, 0.30, 0.36, 0.40, 0.99])
    accepted = metropolis(current, proposed, 0.01, uniform)
    assert accepted.tolist() == [True, True, True, False, True]


def test_inversion_recovers_a_perturbed_perovskite_without_its_lattice():
    true = perturbed_srtio3()
    fp = fingerprint_structures([true])[0]
    result = invert(fp, "SrTiO3", n_sites=5, settings=InversionSettings(trials=16, seed=1))
    assert result.lattice_guess != pytest.approx(3.905, abs=1e-3)  # made, not given
    assert MATCHER.fit(result.structure, true)
    assert abs(result.structure.lattice.a - 3.905) / 3.905 < 0.01
    assert result.converged and result.loss < 5e-4
    assert result.hops >= 1 and result.seconds > 0 and result.restarts >= 0
    summary = result.summary()
    assert set(summary) >= {"loss", "hops", "restarts", "seconds", "lattice_guess"}


def test_symmetry_refinement_is_kept_only_when_not_worse():
    ideal = Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]],
    )
    target, _ = structure_target(ideal)
    result = invert(target.fingerprint, "SrTiO3", 5, settings=InversionSettings(trials=16))
    assert result.symmetrized is not None and result.symmetrized.startswith("Pm-3m")
    # the off-centre Ti is not Pm-3m: refining it would raise the loss, so it is not kept
    off, _ = structure_target(perturbed_srtio3())
    result = invert(off.fingerprint, "SrTiO3", 5, settings=InversionSettings(trials=16, seed=1))
    assert result.symmetrized is None or not result.symmetrized.startswith("Pm-3m")


@pytest.mark.parametrize(
    "composition, n_sites, message",
    [
        ("XxO3", 4, "Xx"),
        ({}, None, "empty composition"),
        ("SrTiO3", 7, "whole atoms"),
    ],
)
def test_bad_targets_are_clear_errors(composition, n_sites, message):
    fp = fingerprint_structures([perturbed_srtio3()])[0]
    with pytest.raises((FingerprintError, ValueError), match=message):
        make_target(fp, composition, n_sites)


def test_wrong_fingerprint_length_is_an_error():
    with pytest.raises(FingerprintError, match="3675"):
        make_target(np.zeros(10), "SrTiO3", 5)


# ----------------------------------------------------------------------- trained generator


@pytest.fixture(scope="module")
def tiny_checkpoint(small_csv, tmp_path_factory):
    """A tiny CVAE trained by the project's own training function on 30 real perovskites."""
    from generators.fingerprint.train import TrainSettings, train

    folder = tmp_path_factory.mktemp("fp-model")
    mp = pytest.MonkeyPatch()
    mp.setenv("CRYSTALLOOP_HOME", str(folder / "home"))
    settings = TrainSettings(epochs=20, hidden=(32, 32), latent_dim=4, batch=16, threads=1)
    path = folder / "tiny.pt"
    train([str(small_csv)], path, settings, log=lambda _: None)
    mp.undo()
    return path


@pytest.fixture(scope="module")
def generator(tiny_checkpoint):
    from generators.fingerprint.sample import FingerprintGenerator

    return FingerprintGenerator.load(tiny_checkpoint)


def test_checkpoint_round_trip(tiny_checkpoint, generator):
    from generators.fingerprint.sample import FingerprintGenerator
    from generators.fingerprint.train import load

    state = load(tiny_checkpoint)
    assert state["kind"] == "fingerprint-cvae" and state["n_train"] == 27
    assert len(state["val_ids"]) == 3 and set(state["latent_prior"]) >= {"all"}
    assert "perov_small.csv" in next(iter(state["scales"].values()))  # an unnamed scale says so
    assert len(next(iter(state["decile_edges"].values()))) == 9
    again = FingerprintGenerator.load(tiny_checkpoint)
    a = generator.sample_random(3, 2, seed=11)
    b = again.sample_random(3, 2, seed=11)
    assert [c.formula for c in a] == [c.formula for c in b]
    assert np.allclose(a[0].structure.frac_coords, b[0].structure.frac_coords)
    with pytest.raises(ValueError, match="not a fingerprint-generator checkpoint"):
        bad = tiny_checkpoint.parent / "bad.pt"
        torch.save({"kind": "other"}, bad)
        FingerprintGenerator.load(bad)


def test_training_resumes_from_its_resume_file(tiny_checkpoint, small_csv, tmp_path, monkeypatch):
    from generators.fingerprint.train import TrainSettings, train

    monkeypatch.setenv("CRYSTALLOOP_HOME", str(tmp_path / "home"))
    resume = tiny_checkpoint.with_suffix(".resume.pt")
    assert resume.is_file()
    settings = TrainSettings(epochs=25, hidden=(32, 32), latent_dim=4, batch=16, threads=1)
    state = train(
        [str(small_csv)], tmp_path / "more.pt", settings, resume=resume, log=lambda _: None
    )
    assert state["epoch"] == 25 and state["history"][-1]["epoch"] == 25
    with pytest.raises(ValueError, match="trained on"):
        train(["other.csv"], tmp_path / "x.pt", settings, resume=resume, log=lambda _: None)


def test_sampling_in_every_mode_returns_structures_with_provenance(generator, small_csv):
    from generators.generation_metrics import composition_valid, structure_valid

    random = generator.sample_random(6, 0, seed=5)
    assert random, generator.last_report
    for c in random:
        p = c.provenance
        assert p.generator == "fingerprint" and p.model_version.startswith("fpcvae-")
        assert p.mode == "random" and p.condition["decile"] == 0 and p.seed >= 5
        assert isinstance(c.structure, Structure) and len(c.structure) >= 1
        assert p.extra["fingerprint_loss"] >= 0 and "inversion" in p.extra
        assert structure_valid(c.structure) and composition_valid(c.structure.composition)
    base = perturbed_srtio3()
    around = generator.sample_around(base, 3, seed=1)
    assert around and all(c.provenance.mode == "targeted" for c in around)
    assert around[0].provenance.base_id == "SrTiO3"
    import pandas as pd

    cifs = pd.read_csv(small_csv)["cif"]
    a, b = (Structure.from_str(cifs[i], fmt="cif") for i in (0, 1))  # training crystals
    line = generator.interpolate(a, b, 3, seed=2)
    assert [round(c.provenance.extra["t"], 2) for c in line] == [0.0, 0.5, 1.0][: len(line)]
    with pytest.raises(ValueError, match="0..9"):
        generator.sample_random(1, 10)


def test_element_set_keeps_samples_inside_the_chemical_space(tiny_checkpoint):
    from generators.fingerprint.sample import FingerprintGenerator

    allowed = {"Ba", "Sr", "Ti", "O", "N"}
    gen = FingerprintGenerator.load(tiny_checkpoint, elements=sorted(allowed))
    out = gen.sample_random(8, 1, seed=3)
    assert all({e.symbol for e in c.structure.composition} <= allowed for c in out)
    rejected = gen.last_report["composition_rejections"]
    assert gen.last_report["returned"] + rejected.get("no acceptable composition", 0) == 8
    with pytest.raises(ValueError, match="unknown element"):
        FingerprintGenerator.load(tiny_checkpoint, elements=["Qq"])
    # the tiny model knows only 5-site perovskites: no training inventory has <= 4 sites
    with pytest.raises(ValueError, match="max_sites=4: no training crystal has so few sites"):
        FingerprintGenerator.load(tiny_checkpoint, max_sites=4)
    small = FingerprintGenerator.load(tiny_checkpoint, max_sites=4, training_inventories=False)
    assert all(len(c.structure) <= 4 for c in small.sample_random(6, 2, seed=8))
    with pytest.raises(ValueError, match="max_sites"):
        FingerprintGenerator.load(tiny_checkpoint, max_sites=99)


def test_compositions_can_be_drawn_with_the_funnels_charge_balance(tiny_checkpoint):
    from generators.fingerprint.sample import FingerprintGenerator
    from generators.generation_metrics import oxidation_states_balanced

    gen = FingerprintGenerator.load(
        tiny_checkpoint, training_inventories=False, charge_balance="oxidation-states"
    )
    out = gen.sample_random(12, 0, seed=5)
    assert out
    assert all(oxidation_states_balanced(c.structure.composition) for c in out)
    rejected = gen.last_report["composition_rejections"]
    assert "not charge balanced (smact)" not in rejected
    with pytest.raises(ValueError, match="charge_balance must be one of"):
        FingerprintGenerator.load(tiny_checkpoint, charge_balance="icsd")


def test_samples_do_not_remake_training_formulas(tiny_checkpoint, small_csv):
    """A sample keeps the sites of its nearest training crystal: drawn with a training
    crystal's formula it would be that crystal again. Such draws are redrawn and counted."""
    import pandas as pd

    from generators.fingerprint.sample import FingerprintGenerator
    from generators.fingerprint.train import load

    state = load(tiny_checkpoint)
    listed = state["templates"]["formulas"]
    frame = pd.read_csv(small_csv)
    assert len(listed) == 27 and set(listed) <= {_reduced(f) for f in frame["formula"]}
    free = FingerprintGenerator(state, avoid_training_formulas=False)
    drawn = {c.structure.composition.reduced_formula for c in free.sample_random(30, 0, seed=1)}
    assert "a training formula" not in free.last_report["composition_rejections"]
    # the tiny model rarely re-draws its 27 formulas: list what it drew as training formulas
    common = sorted(drawn)[: max(1, len(drawn) // 2)]
    state = dict(state, templates=dict(state["templates"], formulas=listed + common))
    gen = FingerprintGenerator(state)
    out = gen.sample_random(30, 0, seed=1)
    assert out and not {c.structure.composition.reduced_formula for c in out} & set(common)
    assert gen.last_report["composition_rejections"]["a training formula"] >= len(common)
    old = dict(state, templates={k: v for k, v in state["templates"].items() if k != "formulas"})
    with pytest.raises(ValueError, match="does not list its training formulas"):
        FingerprintGenerator(old, avoid_training_formulas=True)
    assert FingerprintGenerator(old).avoid_training is False  # older checkpoints: off


def _reduced(formula: str) -> str:
    from pymatgen.core import Composition

    return Composition(formula).reduced_formula


def test_cli_sample_and_reconstruct(tiny_checkpoint, small_csv, tmp_path):
    from agent.cli import app

    runner = CliRunner()
    out = tmp_path / "samples"
    result = runner.invoke(
        app,
        [
            "sample",
            "--generator",
            "fingerprint",
            "--model",
            str(tiny_checkpoint),
            "--n",
            "4",
            "--decile",
            "3",
            "--seed",
            "9",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert rows and all(r["generator"] == "fingerprint" and r["decile"] == "3" for r in rows)
    assert all(Structure.from_file(out / r["file"]) for r in rows if r["file"])
    bad = runner.invoke(app, ["sample", "--generator", "nope", "--out", str(out)])
    assert bad.exit_code != 0 and "unknown generator" in bad.output

    two = tmp_path / "two.csv"
    import pandas as pd

    pd.read_csv(small_csv).iloc[:2].to_csv(two, index=False)
    recon = tmp_path / "recon"
    result = runner.invoke(
        app,
        [
            "reconstruct",
            "--generator",
            "fingerprint",
            "--data",
            str(two),
            "--out",
            str(recon),
            "--json",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "r.json").read_text())
    assert figures["n"] == 2 and figures["match_rate"] == 1.0
    assert figures["match_rate_lattice"] == 1.0 and figures["median_seconds_per_structure"] > 0
    ids = pd.read_csv(two)["material_id"].astype(str)
    assert sorted(p.stem for p in recon.glob("*.cif")) == sorted(ids)


def test_campaign_options_are_typed():
    from agent.config import CampaignConfig, ConfigError

    ok = CampaignConfig.from_dict(
        {"name": "fp", "generators": [{"name": "fingerprint", "options": {"trials": 2}}]}
    )
    assert ok.generators[0].name == "fingerprint"
    alias = CampaignConfig.from_dict({"name": "v", "generators": [{"name": "voxel"}]})
    assert alias.generators[0].name == "voxel-vae"
    with pytest.raises(ConfigError, match="options.temprature: unknown option"):
        CampaignConfig.from_dict(
            {"name": "fp", "generators": [{"name": "fingerprint", "options": {"temprature": 1}}]}
        )
    voxel = CampaignConfig.from_dict(
        {"name": "v", "generators": [{"name": "voxel", "options": {"species": "vote"}}]}
    )
    assert voxel.generators[0].options == {"species": "vote"}
    with pytest.raises(ConfigError, match="options.wrokers: unknown option"):
        CampaignConfig.from_dict(
            {"name": "v", "generators": [{"name": "voxel", "options": {"wrokers": 2}}]}
        )
    with pytest.raises(ConfigError, match="options.species: Input should be"):
        CampaignConfig.from_dict(
            {"name": "v", "generators": [{"name": "voxel", "options": {"species": "majority"}}]}
        )
    with pytest.raises(ConfigError, match="options.charge_balance: Input should be"):
        CampaignConfig.from_dict(
            {
                "name": "fp",
                "generators": [{"name": "fingerprint", "options": {"charge_balance": 1}}],
            }
        )
    with pytest.raises(ConfigError, match="unknown generator 'fingerprints'"):
        CampaignConfig.from_dict({"name": "fp", "generators": [{"name": "fingerprints"}]})


def test_cells_take_a_training_inventory_of_sites():
    """Drawn slot by slot, the count heads' independent odds combine into cells no training
    crystal has (a third of samples measured, none near a held-out perovskite); drawn jointly
    among the training inventories, every cell is one of them (and has a template)."""
    from collections import Counter

    from generators.fingerprint.sample import FingerprintGenerator

    def inventory(candidate) -> tuple[int, ...]:
        counts = sorted(Counter(s.specie.symbol for s in candidate.structure).values())
        return tuple(counts)

    joint = FingerprintGenerator.load()
    known = {tuple(sorted(int(c) for c in row if c > 0)) for row in joint.inventories}
    assert len(known) == 20 and (1, 1, 3) in known  # 28 slot patterns, 20 multisets
    drawn = joint.sample_random(60, 4, seed=11)
    assert len(drawn) == 60 and all(inventory(c) in known for c in drawn)
    slots = FingerprintGenerator.load(training_inventories=False).sample_random(60, 4, seed=11)
    assert sum(inventory(c) not in known for c in slots) == 14  # measured: 14 of 60


def test_drawn_elements_take_the_template_sites_of_lowest_ewald_energy():
    """A perovskite template whose slot 0 sat on the octahedral site would put Sr there and
    Ti on the 12-fold site (what the demo relaxed once: -0.75 eV/atom instead of SrTiO3's
    -3.4); the Ewald arrangement swaps the two cations and leaves the anions alone."""
    from generators.fingerprint.arrange import arrange_on_template

    octahedral_first = np.array(
        [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]
    )
    out = arrange_on_template(["Sr", "Ti", "O"], [1, 1, 3], octahedral_first, 3.9)
    assert out[0].tolist() == [0.5, 0.5, 0.5] and out[1].tolist() == [0.0, 0.0, 0.0]
    assert np.array_equal(out[2:], octahedral_first[2:])
    # already right: unchanged; no oxidation states to be had: the template's order
    assert np.array_equal(arrange_on_template(["Sr", "Ti", "O"], [1, 1, 3], out, 3.9), out)
    assert np.array_equal(
        arrange_on_template(["Ba", "Sr", "Ti"], [1, 1, 3], octahedral_first, 3.9), octahedral_first
    )
