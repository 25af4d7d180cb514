"""Per-cycle store overhead of the agent for a cycle of N candidates (target: well under 1 s).

Replays the store traffic of one daemon cycle, cycle after cycle, so the growth with campaign
size shows: read fingerprints (novelty) -> insert N candidates -> predictions + filter verdicts
as bulk transitions generated->pooled|rejected -> policy scores -> read the pool -> select a
batch -> submit/run/complete each selected candidate with its calculation document -> cycle
statistics, status counts, latest events, lock heartbeat. Structures are real perovskites
(shared perov_5 data). Fingerprints are computed once beforehand (spglib time is reported
separately - it is generator-side CPU work, not store work) and made unique per cycle so every
cycle stores N new documents, the store's worst case; 5% of each cycle repeats an earlier
candidate to exercise deduplication.

    python benchmarks/agent_store.py --candidates 1000 --cycles 5   # -> benchmarks/results/agent_store.json
    python benchmarks/agent_store.py --uri mongodb://localhost:27017   # a real MongoDB
    python benchmarks/agent_store.py --montydb   # also time plain montydb on the same documents
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEROV = REPO.parent / "shared" / "data" / "perov_5" / "val.csv.gz"


class Timer:
    """Wall and CPU seconds per step. CPU time (this process; SQLite runs in it) is the figure
    that does not depend on what else the machine runs; wall time includes waiting for it."""

    def __init__(self) -> None:
        self.times: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def __call__(self, name: str, fn, *args, **kwargs):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.times[name] += time.perf_counter() - t0
        self.cpu[name] += time.process_time() - c0
        return out


def load_structures(n: int):
    import pandas as pd
    from pymatgen.core import Structure

    df = pd.read_csv(PEROV, comment="#").head(n)
    return [Structure.from_str(cif, fmt="cif") for cif in df["cif"]]


def run_cycle(store, campaign: str, cycle: int, structures, fps, rng: random.Random, batch: int):
    from agent.store import Store

    t = Timer()
    held = t("read fingerprints", store.fingerprints, campaign)
    docs = []
    for i, s in enumerate(structures):
        doc = Store.candidate_document(
            {
                "structure": s,
                "fingerprint": f"{fps[i]}#{cycle}",
                "provenance": {"generator": "voxel-vae", "mode": "random", "seed": i},
            },
            campaign,
            cycle,
        )
        docs.append(doc)
    if held:  # 5% repeats of earlier candidates
        old = rng.sample(sorted(held), k=min(len(held), len(docs) // 20))
        for doc, fp in zip(docs, old, strict=False):
            doc["fingerprint"] = fp
    report = t("insert candidates", store._insert_documents, campaign, docs)
    ids = report.inserted
    rejected = [i for i in ids if rng.random() < 0.3]
    rejected_set = set(rejected)
    passed = [i for i in ids if i not in rejected_set]
    verdicts = {
        i: {"filters": {"charge_balance": "no oxidation-state assignment"}} for i in rejected
    }
    preds = {
        i: {
            "predictions": {
                "formation_energy_per_atom": {"mean": rng.gauss(-1, 0.5), "std": 0.1},
                "band_gap": {"mean": rng.uniform(0, 3), "std": 0.2},
            },
            "filters": {"min_distance": "ok", "charge_balance": "ok", "novelty": "ok"},
        }
        for i in passed
    }
    t(
        "transition -> rejected",
        store.transition_many,
        rejected,
        "generated",
        "rejected",
        reason="filters",
        per_candidate=verdicts,
    )
    t(
        "transition -> pooled",
        store.transition_many,
        passed,
        "generated",
        "pooled",
        per_candidate=preds,
    )
    pool = t(
        "read pool",
        store.find_candidates,
        campaign,
        "pooled",
        projection=["predictions", "fingerprint", "formula"],
    )
    scores = {
        d["_id"]: {"score": -d["predictions"]["formation_energy_per_atom"]["mean"]} for d in pool
    }
    t("write scores", store.update_candidates, scores)
    best = sorted(scores, key=lambda i: -scores[i]["score"])[:batch]
    t("transition -> selected", store.transition_many, best, "pooled", "selected")
    for cid in best:
        t(
            "submit/run/complete",
            store.transition,
            cid,
            "selected",
            "submitted",
            job_id=uuid.uuid4().hex,
        )
        t("submit/run/complete", store.save_calculation, cid, campaign, state="queued")
        t("submit/run/complete", store.transition, cid, "submitted", "running")
        t(
            "submit/run/complete",
            store.save_calculation,
            cid,
            campaign,
            state="completed",
            formation_energy_per_atom=rng.gauss(-1, 0.5),
            e_above_hull=abs(rng.gauss(0, 0.1)),
        )
        t("submit/run/complete", store.transition, cid, "running", "completed")
    t(
        "cycle stats + status",
        lambda: (
            store.record_cycle(
                campaign,
                cycle,
                generated=len(docs),
                inserted=len(ids),
                rejected=len(rejected),
                pooled=len(passed),
                selected=len(best),
            ),
            store.count_by_status(campaign),
            store.best_materials(campaign),
            store.events(campaign, limit=50),
        ),
    )
    t("heartbeat", store.heartbeat, campaign, "bench")
    return t, len(ids), len(report.duplicates)


def montydb_reference(structures, n_cycles: int) -> list[dict]:
    """Plain montydb (sqlite storage) on the same documents: insert, count, update_many."""
    from montydb import MontyClient, set_storage

    from agent.store import Store

    path = tempfile.mkdtemp(prefix="montydb-bench-")
    set_storage(path, storage="sqlite")
    coll = MontyClient(path)["crystalloop"]["candidates"]
    rows = []
    for cycle in range(1, n_cycles + 1):
        docs = [
            Store.candidate_document(
                {"structure": s, "fingerprint": f"{i}#{cycle}"}, "bench", cycle
            )
            for i, s in enumerate(structures)
        ]
        t0 = time.perf_counter()
        coll.insert_many(docs)
        t1 = time.perf_counter()
        coll.count_documents({"campaign": "bench", "status": "generated"})
        t2 = time.perf_counter()
        ids = [d["_id"] for d in docs[: len(docs) // 2]]
        coll.update_many({"_id": {"$in": ids}}, {"$set": {"status": "pooled"}})
        t3 = time.perf_counter()
        rows.append(
            {"cycle": cycle, "insert": t1 - t0, "count": t2 - t1, "update_many_half": t3 - t2}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=1000, help="candidates per cycle")
    parser.add_argument("--cycles", type=int, default=5, help="cycles to replay")
    parser.add_argument("--batch", type=int, default=4, help="DFT batch per cycle")
    parser.add_argument("--uri", default=None, help="mongodb:// URI (default: embedded store)")
    parser.add_argument("--montydb", action="store_true", help="also time plain montydb")
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "benchmarks/results/agent_store.json",
        help="results file",
    )
    args = parser.parse_args()

    from agent.store import Store, StoreSettings, fingerprint

    structures = load_structures(args.candidates)
    t0 = time.perf_counter()
    fps = [fingerprint(s) for s in structures]
    fp_seconds = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="crystalloop-bench-"))
    database = f"bench_{uuid.uuid4().hex[:8]}"
    store = Store.connect(args.uri, database, settings=StoreSettings(path=tmp / "store"))
    campaign = "bench"
    store.ensure_campaign(campaign, {"bench": True})
    store.acquire_lock(campaign, owner="bench", ttl=600)
    rng = random.Random(0)
    results = []
    for cycle in range(1, args.cycles + 1):
        timer, inserted, dups = run_cycle(store, campaign, cycle, structures, fps, rng, args.batch)
        results.append(
            {
                "cycle": cycle,
                "inserted": inserted,
                "duplicates": dups,
                "total_wall_s": sum(timer.times.values()),
                "total_cpu_s": sum(timer.cpu.values()),
                "steps_wall_s": dict(timer.times),
                "steps_cpu_s": dict(timer.cpu),
            }
        )
    if args.uri:
        store.client.drop_database(database)
    store.close()

    from rich.console import Console
    from rich.table import Table

    steps = list(results[0]["steps_wall_s"])
    table = Table(
        title=f"store work per cycle of {args.candidates} candidates ({store.backend}), wall / cpu"
    )
    table.add_column("step")
    for r in results:
        table.add_column(f"cycle {r['cycle']}", justify="right")
    for step in steps:
        table.add_row(
            step,
            *(
                f"{r['steps_wall_s'][step] * 1000:.0f} / {r['steps_cpu_s'][step] * 1000:.0f} ms"
                for r in results
            ),
        )
    table.add_row(
        "[bold]total wall / cpu[/bold]",
        *(f"[bold]{r['total_wall_s']:.2f} / {r['total_cpu_s']:.2f} s[/bold]" for r in results),
    )
    table.add_row("stored / duplicates", *(f"{r['inserted']} / {r['duplicates']}" for r in results))
    console = Console(width=max(100, 20 + 24 * len(results)))
    console.print(table)
    console.print(
        f"fingerprints (spglib, not store work): {fp_seconds:.2f} s for {len(structures)} "
        f"structures ({fp_seconds / len(structures) * 1000:.1f} ms each)"
    )
    out = {
        "backend": store.backend,
        "candidates_per_cycle": args.candidates,
        "batch": args.batch,
        "cycles": results,
        "max_total_wall_s": max(r["total_wall_s"] for r in results),
        "max_total_cpu_s": max(r["total_cpu_s"] for r in results),
        "fingerprint_seconds": fp_seconds,
    }
    if args.montydb:
        out["montydb"] = montydb_reference(structures, args.cycles)
        ref = Table(title="plain montydb (sqlite storage), same documents")
        for col in ("cycle", "insert_many", "count_documents", "update_many $in (half)"):
            ref.add_column(col, justify="right")
        for r in out["montydb"]:
            ref.add_row(
                str(r["cycle"]),
                f"{r['insert']:.3f} s",
                f"{r['count']:.3f} s",
                f"{r['update_many_half']:.3f} s",
            )
        console.print(ref)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
