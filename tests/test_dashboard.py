"""`crystalloop dashboard` over a real embedded store: pages, numbers, downloads, security.

The store is filled through the store's own API the way the daemon fills it (agent.loop):
16 real perovskites from the shared data set over two cycles, screened, selected, relaxed
(two completed, one failed, one running), a model registry with a deployed and a refused
version, a daemon lease. Every expectation below is fixed by that construction.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Structure

from agent.config import CampaignConfig
from agent.store import Store
from dft.parse import Attempt
from generators.candidate import Candidate, Provenance

REPO = Path(__file__).resolve().parents[1]
PW_OUT = REPO / "tests" / "data" / "pw_si_vc_relax.out"

# (DFT formation energy, predicted mean, predicted std) of the two completed relaxations
DFT = {8: (-2.35, -2.2, 0.1), 9: (-1.25, -1.5, 0.2)}


def fill_store(perov_csv: Path, workdir: Path) -> dict:
    """The campaign 'demo' (see the module docstring); returns ids and what the test expects."""
    df = pd.read_csv(perov_csv, comment="#").drop_duplicates("formula").head(16)
    structures = [Structure.from_str(row.cif, fmt="cif") for row in df.itertuples()]
    cands = [
        Candidate(
            structure=s,
            provenance=Provenance(generator="fingerprint" if i % 2 == 0 else "dataset", seed=i),
        )
        for i, s in enumerate(structures)
    ]
    ids = [c.id for c in cands]
    config = CampaignConfig.from_dict(
        {"name": "demo", "budgets": {"max_dft_calculations": 10}, "acquisition": {"policy": "lcb"}}
    )
    task_dir = workdir / "qe-task"
    attempt_dirs = [task_dir / "attempt-0", task_dir / "attempt-1"]
    for d in attempt_dirs:
        d.mkdir(parents=True)
        (d / "pw.out").write_text(PW_OUT.read_text())
    attempts = [
        Attempt(
            index=0,
            directory=str(attempt_dirs[0]),
            returncode=0,
            status="scf_unconverged",
            message="convergence NOT achieved after 100 iterations",
            wall_time_s=41.0,
        ),
        Attempt(
            index=1,
            directory=str(attempt_dirs[1]),
            returncode=0,
            status="ok",
            correction={"mixing_beta": 0.3},
            wall_time_s=95.0,
        ),
    ]
    (task_dir / "attempts.json").write_text(json.dumps([a.model_dump() for a in attempts]))
    with Store.connect() as store:
        store.ensure_campaign("demo", config.to_document())
        store.update_campaign("demo", state="running", phase="select")
        store.acquire_lock("demo", owner="node7:4242:abcd", ttl=3600)
        # -- cycle 1: 10 generated, 3 rejected, 7 pooled, 4 selected and submitted
        cycle = store.advance_cycle("demo")
        store.insert_candidates("demo", cycle, cands[:10])
        store.record_cycle("demo", cycle, generated=10, duplicates=0, undecoded=0)
        preds = {
            cid: {
                "predictions": {
                    "formation_energy_per_atom": {"mean": -1.0 - i / 10, "std": 0.05 + i / 100}
                }
            }
            for i, cid in enumerate(ids)
        }
        for i, (_, mean, std) in DFT.items():
            preds[ids[i]]["predictions"]["formation_energy_per_atom"] = {"mean": mean, "std": std}
        store.update_candidates({cid: preds[cid] for cid in ids[:10]})
        verdicts = {
            ids[0]: {"filters": {"novelty": "duplicate of a known crystal"}},
            ids[1]: {"filters": {"novelty": "duplicate of a known crystal"}},
            ids[2]: {"filters": {"chemistry": "not charge balanced"}},
        }
        store.transition_many(
            ids[:3], "generated", "rejected", reason="filters", per_candidate=verdicts
        )
        store.transition_many(ids[3:10], "generated", "pooled")
        store.record_cycle(
            "demo", cycle, pooled=7, rejected=3, rejections={"novelty": 2, "chemistry": 1}
        )
        picks = {
            cid: {"score": 2.5 - k / 2, "selected_cycle": cycle} for k, cid in enumerate(ids[6:10])
        }
        store.transition_many(list(picks), "pooled", "selected", reason="lcb", per_candidate=picks)
        store.record_cycle("demo", cycle, selected=4)
        store.transition_many(ids[6:10], "selected", "submitted", reason="submit")
        store.update_candidates(
            {
                cid: {
                    "dft_handle": {
                        "backend": "local",
                        "candidate_id": cid,
                        "flow_uuid": f"flow-{cid}",
                    }
                }
                for cid in ids[6:10]
            }
        )
        store.record_cycle("demo", cycle, submitted=4, phase="done")
        store.transition(ids[6], "submitted", "running")
        store.save_calculation(
            ids[7],
            "demo",
            state="failed",
            error="pw.x crashed: S matrix not positive definite",
            formula=structures[7].composition.reduced_formula,
        )
        store.transition(ids[7], ["submitted", "running"], "failed", reason="pw.x crashed")
        for i, (e_form, mean, std) in DFT.items():
            relaxed = structures[i].copy()
            relaxed.scale_lattice(relaxed.volume * 1.03)
            formula = structures[i].composition.reduced_formula
            store.save_calculation(
                ids[i],
                "demo",
                state="completed",
                formula=formula,
                formation_energy_per_atom=e_form,
                formation_energy_per_atom_raw=e_form + 0.4,
                anion_correction_per_atom=-0.4,
                energy_per_atom=-800.0 + e_form,
                structure=relaxed.as_dict(),
                settings_key="abc123",
                references={el.symbol: -700.0 for el in structures[i].composition.elements},
                pressure_kbar=1.2,
                ionic_steps=14,
                wall_time_s=136.0,
                n_attempts=2,
                warnings=[],
                known_match=None,
                predicted={"mean": mean, "std": std},
                predicted_formation_energy={"mean": mean, "std": std},
                cycle=cycle,
                e_above_hull=0.0 if i == 8 else 0.12,
                discovery=i == 8,
                task_doc={"qe_task_dir": str(task_dir), "n_attempts": 2},
            )
            store.transition(
                ids[i], "submitted", "completed", dft={"formation_energy_per_atom": e_form}
            )
        # -- cycle 2: 6 generated, 1 rejected, 5 pooled
        cycle = store.advance_cycle("demo")
        store.insert_candidates("demo", cycle, cands[10:])
        store.record_cycle("demo", cycle, generated=6, duplicates=0, undecoded=0)
        store.update_candidates({cid: preds[cid] for cid in ids[10:]})
        store.transition_many(
            ids[10:11],
            "generated",
            "rejected",
            reason="filters",
            per_candidate={ids[10]: {"filters": {"chemistry": "not charge balanced"}}},
        )
        store.transition_many(ids[11:], "generated", "pooled")
        store.record_cycle("demo", cycle, pooled=5, rejected=1, rejections={"chemistry": 1})
        store.register_model(
            "demo",
            "ft-00002",
            training_size=1,
            holdout_metrics={"old_mae": 0.21, "new_mae": 0.15},
            deployed=True,
            state="deployed",
            previous="shipped-default",
            holdout_ids=[ids[9]],
        )
        verdict = {  # policies.finetune.HeadVerdict.to_dict(), one per head
            "head": "formation_energy_per_atom",
            "campaign_old": {"mae": 0.15, "rmse": 0.18},
            "campaign_new": {"mae": 0.19, "rmse": 0.22},
            "anchor_old": {"mae": 0.074},
            "anchor_new": {"mae": 0.081},
            "passed": False,
            "reason": "campaign MAE rose",
        }
        store.register_model(
            "demo", "ft-00003", training_size=2,
            holdout_metrics={"formation_energy_per_atom": verdict},
            state="rejected", previous="ft-00002", folds=2,
        )  # fmt: skip
    formulas = [s.composition.reduced_formula for s in structures]
    return {"ids": ids, "formulas": formulas, "task_dir": task_dir}


COUNTS = {
    "generated": 0,
    "rejected": 4,
    "pooled": 8,
    "selected": 0,
    "submitted": 0,
    "running": 1,
    "completed": 2,
    "failed": 1,
}


@pytest.fixture()
def filled(crystalloop_home: Path, perov_csv: Path, tmp_path: Path) -> dict:
    return fill_store(perov_csv, tmp_path)


@pytest.fixture()
def client(filled: dict):
    from starlette.testclient import TestClient

    from agent.dashboard.app import create_app

    with TestClient(create_app(refresh=0)) as c:
        yield c


def texts(row: list[dict]) -> list[str]:
    return [c["t"] for c in row]


def api(client, path: str) -> dict:
    response = client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


def test_campaigns_list_shows_the_store_numbers(client, filled):
    data = api(client, "/api/campaigns")
    (row,) = data["tables"]["campaigns"]["rows"]
    best = f"{filled['formulas'][8]} -2.350"
    assert texts(row) == [
        "demo", "running", "node7:4242:abcd", "2",
        "0", "4", "8", "0", "0", "1", "2", "1",
        "4 / 10", "1", best, "ft-00002",
    ]  # fmt: skip
    assert row[0]["href"] == "/campaign/demo"
    assert row[14]["href"] == f"/candidate/{filled['ids'][8]}"
    html = client.get("/").text
    assert "node7:4242:abcd" in html and best in html
    assert '<script src="/static/plotly.min.js">' in html


def test_campaign_page_numbers_and_plots(client, filled):
    data = api(client, "/api/campaign/demo")
    f = data["fields"]
    assert (f["cycle"], f["candidates"], f["dft_used"]) == ("2", "16", "4 / 10")
    assert (f["dft_completed"], f["dft_failed"], f["dft_running"], f["dft_queued"]) == (
        "2",
        "1",
        "1",
        "0",
    )
    assert f["discoveries"] == "1" and f["model"] == "ft-00002"
    assert {k[6:]: int(v) for k, v in f.items() if k.startswith("count_")} == COUNTS
    figs = data["figures"]
    cycles = {t["name"]: t["y"] for t in figs["cycles"]["data"]}
    assert cycles == {
        "generated": [10, 6], "rejected": [3, 1], "pooled": [7, 5], "selected": [4, 0],
        "DFT completed": [2, 0], "DFT failed": [1, 0],
    }  # fmt: skip
    assert {t["name"]: t["y"] for t in figs["rejections"]["data"]} == {
        "chemistry": [1, 1],
        "novelty": [2, 0],
    }
    funnel = figs["funnel"]["data"][0]
    assert funnel["x"] == [6, 5, 0, 0, 0] and "cycle 2" in figs["funnel"]["layout"]["title"]["text"]
    parity = figs["parity"]
    assert parity["layout"]["meta"]["n"] == 2
    assert parity["layout"]["meta"]["mae"] == pytest.approx(0.2)
    assert sorted(parity["data"][0]["y"]) == [-2.35, -1.25]
    assert sorted(parity["data"][0]["error_x"]["array"]) == [0.1, 0.2]
    best = figs["best"]["data"][0]
    assert best["x"] == [1, 2, 3]  # failed, then the two completed, in the order they finished
    assert best["y"] == [None, -2.35, -2.35]
    by_gen = {r[0]["t"]: texts(r)[1:] for r in data["tables"]["generators"]["rows"]}
    assert by_gen == {"fingerprint": ["8", "5", "1", "1"], "dataset": ["8", "7", "1", "0"]}
    hull = figs["hull"]
    assert hull["data"] and "Convex hull of" in hull["layout"]["title"]["text"]
    page = client.get("/campaign/demo")
    assert page.status_code == 200 and 'data-figure="parity"' in page.text


def test_candidates_table_filters_sorts_paginates(client, filled):
    ids = filled["ids"]
    data = api(client, "/api/campaign/demo/candidates?status=pooled&sort=predicted&dir=asc")
    assert data["fields"]["total"] == "8" and data["fields"]["all"] == "16"
    rows = data["tables"]["candidates"]["rows"]
    # pooled: ids 3, 4, 5, 11..15 with predicted mean -1 - i/10: the lowest is id 15
    assert rows[0][0]["href"] == f"/candidate/{ids[15]}"
    assert [r[6]["t"] for r in rows] == [
        "-2.500",
        "-2.400",
        "-2.300",
        "-2.200",
        "-2.100",
        "-1.500",
        "-1.400",
        "-1.300",
    ]
    paged = api(client, "/api/campaign/demo/candidates?per_page=5&page=4&sort=cycle")
    assert (
        paged["fields"]["page"] == "page 4 of 4" and len(paged["tables"]["candidates"]["rows"]) == 1
    )
    dataset = api(client, "/api/campaign/demo/candidates?generator=dataset")
    assert dataset["fields"]["total"] == "8"
    novelty = api(client, "/api/campaign/demo/candidates?reason=novelty")
    assert novelty["fields"]["total"] == "2"
    assert {r[11]["t"] for r in novelty["tables"]["candidates"]["rows"]} == {"novelty"}
    dft = api(client, "/api/campaign/demo/candidates?sort=dft&dir=asc")["tables"]["candidates"][
        "rows"
    ]
    assert [r[9]["t"] for r in dft[:3]] == ["-2.350", "-1.250", "-"]
    formula = filled["formulas"][9]
    hit = api(client, f"/api/campaign/demo/candidates?formula={formula.lower()}")
    shown = [r[4]["t"] for r in hit["tables"]["candidates"]["rows"]]
    assert formula in shown and all(formula.lower() in f.lower() for f in shown)
    html = client.get("/campaign/demo/candidates?status=failed").text
    assert "1</span> of <span" in html and "S matrix" not in html  # errors live on the queue page


def test_downloads_csv_and_cif(client, filled):
    response = client.get("/campaign/demo/candidates.csv?status=completed&status=failed")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert sorted(r["id"] for r in rows) == sorted(filled["ids"][7:10])
    done = {r["id"]: r for r in rows}[filled["ids"][8]]
    assert (done["dft"], done["discovery"], done["generator"]) == ("-2.35", "True", "fingerprint")
    z = client.get("/campaign/demo/candidates.zip?status=completed")
    names = sorted(zipfile.ZipFile(io.BytesIO(z.content)).namelist())
    assert len(names) == 4 and sum(n.endswith("_relaxed.cif") for n in names) == 2
    cif = client.get(f"/candidate/{filled['ids'][8]}/relaxed.cif").text
    relaxed = Structure.from_str(cif, fmt="cif")
    assert relaxed.composition.reduced_formula == filled["formulas"][8]
    assert client.get(f"/candidate/{filled['ids'][3]}/relaxed.cif").status_code == 404


def test_candidate_page_has_structures_attempts_and_events(client, filled):
    cid = filled["ids"][8]
    data = api(client, f"/api/candidate/{cid}")
    f = data["fields"]
    assert (f["formula"], f["status"], f["generator"], f["dft"], f["discovery"]) == (
        filled["formulas"][8], "completed", "fingerprint", "-2.350", "yes",
    )  # fmt: skip
    gen, rel = data["figures"]["generated"], data["figures"]["relaxed"]
    assert gen["layout"]["meta"]["formula"] == filled["formulas"][8]
    assert rel["layout"]["meta"]["volume"] == pytest.approx(
        gen["layout"]["meta"]["volume"] * 1.03, rel=1e-3
    )
    assert data["figures"]["generated"]["data"][-1]["name"] == "cell"
    assert texts(data["tables"]["predictions"]["rows"][0])[:3] == [
        "formation_energy_per_atom",
        "-2.200",
        "0.100",
    ]
    attempts = data["tables"]["attempts"]["rows"]
    assert [texts(a) for a in attempts] == [
        ["0", "scf_unconverged", "convergence NOT achieved after 100 iterations", "-", "41 s"],
        ["1", "ok", "-", '{"mixing_beta": 0.3}', "95 s"],
    ]
    events = [texts(e)[1:4] for e in data["tables"]["events"]["rows"]]
    assert events == [
        ["transition", "-", "generated"],
        ["transition", "generated", "pooled"],
        ["transition", "pooled", "selected"],
        ["transition", "selected", "submitted"],
        ["transition", "submitted", "completed"],
    ]
    html = client.get(f"/candidate/{cid}").text
    assert "JOB DONE." in html  # the tail of the attempt's pw.out
    assert client.get("/candidate/nope").status_code == 404


def test_queue_models_and_policies_pages(client, filled):
    ids = filled["ids"]
    q = api(client, "/api/campaign/demo/queue")
    assert q["fields"] == {"running": "1", "queued": "0", "failed": "1", "completed": "2"}
    (running,) = q["tables"]["running"]["rows"]
    assert (
        running[0]["href"] == f"/candidate/{ids[6]}"
        and running[7]["t"] == "local flow " + f"flow-{ids[6]}"[:8]
    )
    (failed,) = q["tables"]["failed"]["rows"]
    assert failed[8]["t"] == "pw.x crashed: S matrix not positive definite"
    m = api(client, "/api/campaign/demo/models")
    assert m["fields"] == {"versions": "2", "deployed": "ft-00002"}
    rows = [texts(r) for r in m["tables"]["models"]["rows"]]
    assert [(r[0], r[3], r[4], r[5], r[6], r[7], r[8], r[9]) for r in rows] == [
        ("ft-00002", "1", "1", "0.210", "0.150", "-", "passed the gate: deployed", "yes"),
        (
            "ft-00003", "2", "2", "0.150", "0.190", "0.081",
            "refused by the validation gate; formation_energy_per_atom: failed (campaign MAE rose)",
            "no",
        ),
    ]  # fmt: skip
    mae = {t["name"]: t["y"] for t in m["figures"]["models"]["data"]}
    assert mae == {
        "hold-out MAE before (deployed model)": [0.21, 0.15],
        "hold-out MAE after (fine-tuned)": [0.15, 0.19],
    }
    p = api(client, "/api/campaign/demo/policies")
    assert p["fields"] == {"policy": "lcb", "selected": "4"}
    replay = json.loads((REPO / "benchmarks/results/replay.json").read_text())
    shown = {texts(r)[0]: texts(r)[2] for r in p["tables"]["replay"]["rows"]}
    assert shown == {k: f"{v['discoveries_mean']:.1f}" for k, v in replay["summary"].items()}
    curves = {t["name"] for t in p["figures"]["replay"]["data"] if t.get("showlegend", True)}
    assert curves == set(replay["curves"])
    assert client.get("/policies").status_code == 200


def test_assets_are_served_locally(client):
    js = client.get("/static/plotly.min.js")
    assert (
        js.status_code == 200
        and len(js.content) > 1_000_000
        and b"plotly" in js.content[:2000].lower()
    )
    html = client.get("/").text
    assert "http://" not in html.replace("http://testserver", "") and "https://" not in html
    assert client.get("/static/dashboard.js").status_code == 200


# -- security ------------------------------------------------------------------------------
def test_script_in_names_and_formulas_is_text(client, filled):
    evil = "<script>alert(1)</script>"
    with Store.connect() as store:
        store.ensure_campaign(evil)
        store.update_candidates({filled["ids"][3]: {"formula": "<script>alert(2)</script>"}})
    for path in ("/", "/campaign/demo/candidates?status=pooled", f"/candidate/{filled['ids'][3]}"):
        html = client.get(path).text
        assert "<script>alert(" not in html, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/").text
    assert (
        "&lt;script&gt;alert(2)&lt;/script&gt;" in client.get(f"/candidate/{filled['ids'][3]}").text
    )
    from urllib.parse import quote

    page = client.get("/campaign/" + quote(evil, safe=""))
    assert page.status_code == 200 and "<script>alert(" not in page.text


def snapshot() -> dict[str, list]:
    with Store.connect() as store:
        return {
            name: sorted(json.dumps(d, default=str, sort_keys=True) for d in store.c[name].find({}))
            for name in (
                "campaigns",
                "candidates",
                "calculations",
                "models",
                "events",
                "cycles",
                "locks",
            )
        }


def test_no_route_writes_to_the_store(client, filled):
    before = snapshot()
    cid = filled["ids"][8]
    paths = [
        "/", "/api/campaigns", "/campaign/demo", "/api/campaign/demo", "/campaign/demo/candidates",
        "/api/campaign/demo/candidates?sort=score", "/campaign/demo/candidates.csv",
        "/campaign/demo/candidates.zip", "/campaign/demo/queue", "/campaign/demo/models",
        "/campaign/demo/policies", "/policies", f"/candidate/{cid}", f"/api/candidate/{cid}",
        f"/candidate/{cid}/generated.cif", "/campaign/nope", "/candidate/nope",
    ]  # fmt: skip
    for path in paths:
        assert client.get(path).status_code in (200, 404), path
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert client.request(method, "/api/campaign/demo").status_code == 405
    assert snapshot() == before


def test_read_only_store_has_no_writes_and_sqlite_refuses_them(filled):
    from agent.dashboard.source import StoreSource

    store = StoreSource().get()
    for name in (
        "save_calculation",
        "transition",
        "update_candidates",
        "insert_candidates",
        "request_stop",
    ):
        with pytest.raises(AttributeError):
            getattr(store, name)
    errors = []

    def worker() -> None:  # a fresh thread: its own SQLite connection, guarded on first use
        assert store.get_campaign("demo") is not None
        try:
            store._store.save_calculation("x", "demo", state="completed")
        except Exception as exc:  # noqa: BLE001 - whatever it raises, it must not write
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.OperationalError)
    assert "readonly" in str(errors[0])
    with Store.connect() as s:
        assert s.get_calculation("x") is None


def test_token_is_required_when_configured(filled):
    from starlette.testclient import TestClient

    from agent.dashboard.app import create_app

    with TestClient(create_app(token="s3cret-token", refresh=0)) as c:
        for path in (
            "/",
            "/api/campaigns",
            "/static/plotly.min.js",
            "/campaign/demo/candidates.csv",
        ):
            assert c.get(path).status_code == 401, path
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/?token=wrong").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert (
            c.get("/api/campaigns", headers={"X-Crystalloop-Token": "s3cret-token"}).status_code
            == 200
        )
        first = c.get("/campaign/demo?token=s3cret-token&system=x", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/campaign/demo?system=x"
        assert "HttpOnly" in first.headers["set-cookie"]
        assert c.get("/api/campaign/demo").status_code == 200  # the cookie now carries it
        c.cookies.clear()
        assert c.get("/api/campaign/demo").status_code == 401


def test_non_loopback_host_is_refused_without_token(monkeypatch, crystalloop_home):
    import typer
    from typer.testing import CliRunner

    from agent.dashboard import cli
    from agent.dashboard.security import check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("node7")
    assert check_bind("0.0.0.0", "tok") is None and check_bind("127.0.0.1", None) is None
    app = typer.Typer()
    cli.register(app)
    app.command("noop")(lambda: None)
    monkeypatch.delenv("CRYSTALLOOP_DASHBOARD_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["dashboard", "--host", "0.0.0.0", "--port", "8999"])
    assert result.exit_code == 2 and "CRYSTALLOOP_DASHBOARD_TOKEN" in result.output
    assert not (crystalloop_home / "store").exists()  # refused before touching anything


def test_no_store_yet_is_said_and_not_created(crystalloop_home):
    from starlette.testclient import TestClient

    from agent.dashboard.app import create_app

    with TestClient(create_app(refresh=0)) as c:
        page = c.get("/")
        assert page.status_code == 200 and "no store yet" in page.text
    assert not (crystalloop_home / "store").exists()


def test_digest_follows_the_event_log(filled):
    from agent.dashboard.digest import Digest
    from agent.dashboard.source import StoreSource

    store = StoreSource().get()
    digest = Digest(store, "demo")
    rows = digest.fresh()
    assert len(rows) == 16 and digest.rebuilds == 1
    ids = filled["ids"]
    with Store.connect() as writer:
        writer.transition_many(
            ids[3:5], "pooled", "selected", per_candidate={ids[3]: {"score": 9.0}}
        )
    digest.checked_at = 0.0
    rows = digest.fresh()
    assert (rows[ids[3]].status, rows[ids[3]].score, rows[ids[4]].status) == (
        "selected",
        9.0,
        "selected",
    )
    assert digest.rebuilds == 1 and digest.rereads >= 2  # re-read what changed, no rescan
