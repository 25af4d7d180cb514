"""Campaign files: the shipped template and demo are valid; every mistake names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.config import TEMPLATE, CampaignConfig, ConfigError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "perovskite-demo.yaml"


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_template_and_demo_are_valid():
    template = CampaignConfig.from_yaml(TEMPLATE)
    assert template.name == "my-campaign"
    assert template.generators[0].candidates_per_cycle == 1000
    assert template.dft.ecutwfc == "auto"
    demo = CampaignConfig.from_yaml(DEMO)
    assert demo.dft.backend == "local" and demo.store.uri is None
    assert demo.stopping.max_cycles == 2
    assert 2 <= demo.budgets.max_dft_calculations <= 4
    overrides = demo.dft.settings_overrides()
    assert overrides["concurrency"] == demo.dft.max_concurrent
    assert "ecutwfc" not in overrides  # auto: from the pseudopotential hints


def test_defaults_fill_a_minimal_file(tmp_path):
    config = CampaignConfig.from_yaml(_write(tmp_path, {"name": "tiny"}))
    assert config.objective.goal == "minimise"
    assert config.filters.min_distance == 0.5
    assert config.acquisition.params == {"kappa": 1.0}
    doc = config.to_document()
    assert CampaignConfig.from_dict(doc) == config  # the stored form round-trips
    assert config.digest() == CampaignConfig.from_dict(doc).digest()


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"name": "x", "bach_size": 3}, ["bach_size: unknown setting"]),
        ({"name": "x", "dft": {"ecutwfc": 2}}, ["dft.ecutwfc"]),
        ({"name": "x", "dft": {"backend": "slurm"}}, ["dft.backend"]),
        ({"name": "x", "dft": {"kpoint_densty": 100}}, ["dft.kpoint_densty: unknown setting"]),
        ({"name": "x", "objective": {"goal": "window"}}, ["objective: a window objective"]),
        ({"name": "x", "objective": {"goal": "window", "min": 2, "max": 1}}, ["objective: min"]),
        ({"name": "x", "objective": {"property": "colour"}}, ["objective.property"]),
        ({"name": "x", "generators": [{"mode": "around-base"}]}, ["generators.0: mode around"]),
        ({"name": "x", "generators": [{"deciles": [3, 12]}]}, ["generators.0.deciles"]),
        ({"name": "x", "generators": []}, ["generators: "]),
        ({"name": "x", "batch_size": 10, "budgets": {"max_dft_calculations": 4}}, ["batch_size"]),
        ({"name": "x", "store": {"uri": "http://db"}}, ["store.uri"]),
        ({"name": "bad name!"}, ["name"]),
        ({"batch_size": 2}, ["name: Field required"]),
        (
            {"name": "x", "batch_size": 0, "seed": "abc", "retraining": {"folds": 1}},
            ["batch_size", "seed", "retraining.folds"],
        ),
    ],
)
def test_errors_name_the_field(tmp_path, data, fields):
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        CampaignConfig.from_yaml(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for field in fields:
        assert f"  {field}" in message, message
    assert len(message.splitlines()) == 1 + len(fields)


def test_unreadable_files_are_one_clear_error(tmp_path, crystalloop_home):
    with pytest.raises(ConfigError, match="no such campaign file"):
        CampaignConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        CampaignConfig.from_yaml(_write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        CampaignConfig.from_yaml(_write(tmp_path, "- just\n- a list\n"))
    # validation never opens the store: nothing was created under CRYSTALLOOP_HOME
    assert list(crystalloop_home.iterdir()) == []


def test_auto_cutoff_is_the_chemical_space_s_so_references_are_shared() -> None:
    """PseudoDojo normal hints (Ha): K 37, Rb 23, Ca 34, Cl 29. Per compound, RbCaCl3 would
    get 68 Ry and KCaCl3 74 Ry, and Ca and Cl references would be computed twice."""
    from agent.config import DFTConfig

    dft = DFTConfig()
    assert dft.settings_overrides(["K", "Rb", "Ca", "Cl"])["ecutwfc"] == 74.0
    assert "ecutwfc" not in dft.settings_overrides()  # no chemical space: per compound
    assert DFTConfig(ecutwfc=50).settings_overrides(["K"])["ecutwfc"] == 50.0
