"""`crystalloop check FILE`: a complete validation that writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agent.cli import app

runner = CliRunner()
DEMO = Path(__file__).parents[1] / "examples" / "perovskite-demo.yaml"


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="session")
def installed_pseudos() -> Path:
    """The user's installed PseudoDojo family, resolved before a test moves CRYSTALLOOP_HOME
    (`make test` installs it first, so this is a no-op there)."""
    from dft.pseudos import install
    from dft.settings import DFTSettings

    return install("pseudodojo-pbe-standard", DFTSettings())


@pytest.fixture()
def empty_home(tmp_path, monkeypatch, installed_pseudos, crystalloop_home, shared_data) -> Path:
    """A CRYSTALLOOP_HOME that does not exist yet (pseudopotentials from the installed set,
    matminer's data sets from the copy beside the checkout, as `crystalloop data fetch` would
    have them)."""
    monkeypatch.setenv("CRYSTALLOOP_DFT_PSEUDO_DIR", str(installed_pseudos))
    monkeypatch.setenv("CRYSTALLOOP_DATA_CACHE_DIR", str(shared_data))
    home = tmp_path / "never-written"
    monkeypatch.setenv("CRYSTALLOOP_HOME", str(home))
    return home


def test_the_init_template_checks_and_nothing_is_written(empty_home, tmp_path):
    template = tmp_path / "campaign.yaml"
    assert runner.invoke(app, ["init", str(template)]).exit_code == 0
    result = runner.invoke(app, ["check", str(template)])
    out = words(result.output)
    assert result.exit_code == 0, out
    assert out.startswith("my-campaign: valid. Per cycle it would generate 1000 from voxel-vae")
    assert "policy lcb (kappa 1.0), objective minimise formation_energy_per_atom" in out
    assert "stop after 50 DFT calculations" in out
    assert not empty_home.exists()


def test_the_demo_says_what_it_would_do(empty_home, monkeypatch, shared_data):
    # matminer:flla_2015 from the copy beside the checkout instead of `crystalloop data fetch`
    monkeypatch.setenv("CRYSTALLOOP_DATA_CACHE_DIR", str(shared_data))
    result = runner.invoke(app, ["check", str(DEMO)])
    out = words(result.output)
    assert result.exit_code == 0, out
    assert "generate 40 from fingerprint (fpcvae-" in out
    assert "[-inf, -1.52] eV/atom on Materials Project PBE formation energy" in out
    assert "not one of 6,175 known crystals" in out  # flla_2015 + elastic_tensor + dielectric
    assert "ecutwfc 84 Ry for Ba-O-Sr-Ti" in out and "symmetrized within 0.2 A" in out
    assert not empty_home.exists()


def _variant(tmp_path: Path, change) -> Path:
    config = yaml.safe_load(DEMO.read_text())
    config["filters"]["known_sources"] = []
    change(config)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_e_above_hull_objective_checks(empty_home, tmp_path):
    path = _variant(tmp_path, lambda c: c["objective"].update(property="e_above_hull"))
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "objective minimise e_above_hull" in words(result.output)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda c: c["generators"][0]["options"].update(temperature=2.0), "temperature"),
        (lambda c: c["dft"].update(kpoint_densty=300), "kpoint_densty"),
        (lambda c: c["retraining"].update(update_deciles=True), "update_deciles"),
        (lambda c: c["generators"][0].update(condition_property="band_gap"), "condition_property"),
        (lambda c: c["objective"].update(property="hardness"), "property"),
    ],
)
def test_a_bad_field_is_one_error_naming_it(empty_home, tmp_path, change, named):
    result = runner.invoke(app, ["check", str(_variant(tmp_path, change))])
    out = words(result.output)
    assert result.exit_code == 2, out
    assert out.count("error:") == 1 and named in out and "Traceback" not in out, out
    assert not empty_home.exists()


def test_a_replay_source_that_is_not_there_is_refused_before_the_run(empty_home, tmp_path):
    """The trainer would read it only at the first retraining, hours into a campaign."""
    missing = tmp_path / "nowhere.csv.gz"
    path = _variant(tmp_path, lambda c: c["retraining"].update(replay_source=str(missing)))
    result = runner.invoke(app, ["check", str(path)])
    out = words(result.output)
    assert result.exit_code == 2, out
    assert out.count("error:") == 1 and "retraining.replay_source" in out, out
    assert str(missing) in out and not empty_home.exists()
