"""Fine-tuning behind the validation gate, on real perovskite formation energies."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import CampaignConfig
from agent.retrain import gate, holdout_split, load_deployed, retrain
from agent.store import Store
from generators.data import read_matminer


def test_gate_rule() -> None:
    assert gate(None, 0.3)  # first version: anything finite
    assert gate(0.2, 0.2) and gate(0.2, 0.1)  # not worse
    assert not gate(0.2, 0.25)  # worse
    assert not gate(0.2, 0.15, min_improvement=0.1)  # better, but not by enough
    assert not gate(0.2, float("nan"))


@pytest.fixture()
def store_with_results(crystalloop_home, matminer_dir):
    # Materials Project formation energies: the labels the shipped surrogate was trained on
    records, _ = read_matminer("flla_2015", matminer_dir)
    records = [r for r in records if len(r.structure) <= 6]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(records), size=24, replace=False)
    config = CampaignConfig.model_validate(
        {"name": "gate-test", "retraining": {"holdout_fraction": 0.3, "every_n_results": 2}}
    )
    store = Store.connect()
    store.ensure_campaign(config.name, config.model_dump(mode="json"))
    for i in picks:
        r = records[int(i)]
        store.save_calculation(
            f"c{i}",
            config.name,
            state="completed",
            formula=r.structure.composition.reduced_formula,
            structure=r.structure.as_dict(),
            formation_energy_per_atom=r.properties["formation_energy_per_atom"],
        )
    yield store, config
    store.close()


def test_gate_refuses_a_worse_model_and_keeps_the_deployed_one(store_with_results):
    store, config = store_with_results
    # Training labels 2 eV/atom off (as from a DFT basis that is far too small), hold-out labels
    # right: the fine-tuned model is worse on the hold-out, and the gate must refuse it.
    calcs = store.find_calculations(config.name, sort=[("_id", 1)])
    _, train = holdout_split(len(calcs), 0.3, f"{config.name}:ft-bad")
    for i in train:
        c = calcs[int(i)]
        store.save_calculation(
            c["candidate_id"], config.name, c["_id"],
            formation_energy_per_atom=c["formation_energy_per_atom"] + 2.0,
        )  # fmt: skip
    bad = retrain(store, config.name, "ft-bad")
    assert bad["new"]["n"] == 7
    assert bad["new"]["mae"] > bad["old"]["mae"]
    assert bad["deployed"] is False
    assert store.deployed_model(config.name) is None
    models = {m["version"]: m for m in store.list_models(config.name)}
    assert models["ft-bad"]["state"] == "rejected"
    assert models["ft-bad"]["previous"] == "shipped-default"
    metrics = models["ft-bad"]["holdout_metrics"]
    assert metrics["new_mae"] > metrics["old_mae"]

    # with the labels right again, a fine-tune is judged by the same rule; what is deployed
    # loads back from the store and predicts
    for i in train:
        c = calcs[int(i)]
        store.save_calculation(
            c["candidate_id"], config.name, c["_id"],
            formation_energy_per_atom=c["formation_energy_per_atom"],
        )  # fmt: skip
    sane = retrain(store, config.name, "ft-sane")
    assert sane["deployed"] == gate(sane["old"]["mae"], sane["new"]["mae"])
    model, model_doc = load_deployed(store, config.name)
    assert (model_doc or {}).get("version") == ("ft-sane" if sane["deployed"] else None)
    prediction = model.predict([Store.structure_of(calcs[0])])
    assert np.isfinite(prediction["formation_energy_per_atom"][0][0])


def test_fine_tuning_leaves_the_energy_head_alone(store_with_results):
    """pw.x total energies (here -800 eV/atom, a pseudopotential-dependent number) are not on
    the energy head's Materials Project scale: a fine-tune must not train that head on them."""
    import io

    import torch

    from policies.surrogate import Surrogate, load_default

    store, config = store_with_results
    calcs = store.find_calculations(config.name, sort=[("_id", 1)])
    for c in calcs:
        store.save_calculation(c["candidate_id"], config.name, c["_id"], energy_per_atom=-800.0)
    retrain(store, config.name, "ft-energy")
    (doc,) = [m for m in store.list_models(config.name) if m["version"] == "ft-energy"]
    state = torch.load(io.BytesIO(store.get_model_weights(doc["weights_id"])), weights_only=True)
    structures = [Store.structure_of(c) for c in calcs[:4]]
    before = load_default().predict(structures, properties=["energy_per_atom"])
    after = Surrogate.from_state(state).predict(structures, properties=["energy_per_atom"])
    np.testing.assert_allclose(after["energy_per_atom"][0], before["energy_per_atom"][0])
    assert np.all(after["energy_per_atom"][0] > -20)  # still eV/atom on MP's scale
