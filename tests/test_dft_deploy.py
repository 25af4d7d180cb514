"""The deploy/ templates load with the classes that will read them in production."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_fireworks_templates_load() -> None:
    from fireworks import FWorker
    from fireworks.core.launchpad import LaunchPad
    from fireworks.utilities.fw_serializers import load_object_from_file

    lp = LaunchPad.from_file(str(DEPLOY / "my_launchpad.yaml"))  # pymongo connects lazily
    assert lp.name == "crystalloop_fireworks"
    assert FWorker.from_file(str(DEPLOY / "my_fworker.yaml")).name == "crystalloop_cluster_worker"
    qa = load_object_from_file(str(DEPLOY / "my_qadapter.yaml"))
    assert qa.q_type == "SLURM" and "CRYSTALLOOP_DFT_LAUNCHER" in qa["pre_rocket"]
    script = qa.get_script_str(str(DEPLOY))
    assert "#SBATCH" in script and "rlaunch" in script


def test_jobflow_template_builds_mongo_and_gridfs_stores() -> None:
    from jobflow import JobStore
    from maggma.stores import GridFSStore, MongoStore

    spec = yaml.safe_load((DEPLOY / "jobflow.yaml").read_text())["JOB_STORE"]
    store = JobStore.from_dict_spec(spec)
    assert isinstance(store.docs_store, MongoStore)
    assert isinstance(store.additional_stores["data"], GridFSStore)
