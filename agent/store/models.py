"""The model registry: surrogate versions, their weights and which one is deployed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.store.connection import StoreConnection, now


class ModelsMixin(StoreConnection):
    def put_model_weights(self, data: bytes, filename: str = "weights.pt") -> str:
        """Store a weights file; returns its id (GridFS on MongoDB, a checksummed file under
        ``<store>/models`` on the embedded backend)."""
        digest = hashlib.sha256(data).hexdigest()
        if self.backend == "embedded":
            folder = Path(self.settings.path) / "models"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{digest}.bin"
            if not path.exists():
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(data)
                os.replace(tmp, path)  # atomic: a crash never leaves a half file
            return f"sha256:{digest}"
        import gridfs

        fs = gridfs.GridFS(self.db, collection="model_weights")
        file_id = self._retry(
            lambda: fs.put(data, filename=filename, metadata={"sha256": digest}),
            "put weights",
        )
        return str(file_id)

    def get_model_weights(self, weights_id: str) -> bytes:
        """The bytes of a stored weights file, checksum verified."""
        if weights_id.startswith("sha256:"):
            digest = weights_id.removeprefix("sha256:")
            data = (Path(self.settings.path) / "models" / f"{digest}.bin").read_bytes()
            expected = digest
        else:
            import gridfs
            from bson import ObjectId

            fs = gridfs.GridFS(self.db, collection="model_weights")
            grid_out = self._retry(lambda: fs.get(ObjectId(weights_id)), "get weights")
            data = grid_out.read()
            expected = (grid_out.metadata or {}).get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise OSError(f"model weights {weights_id} are corrupt (checksum mismatch)")
        return data

    def register_model(
        self,
        campaign: str,
        version: str,
        *,
        kind: str = "surrogate",
        training_size: int,
        holdout_metrics: Mapping[str, float],
        weights_id: str | None = None,
        deployed: bool = False,
        **extra: Any,
    ) -> str:
        """Record a model version (idempotent per campaign/kind/version)."""
        model_id = f"{campaign}:{kind}:{version}"
        t = now()
        doc = {
            "campaign": campaign,
            "kind": kind,
            "version": version,
            "training_size": int(training_size),
            "holdout_metrics": dict(holdout_metrics),
            "weights_id": weights_id,
            "updated_at": t,
            **extra,
        }
        self._retry(  # re-registering a version updates it but never undeploys it
            lambda: self.c["models"].update_one(
                {"_id": model_id},
                {"$set": doc, "$setOnInsert": {"created_at": t, "deployed": False}},
                upsert=True,
            ),
            "register model",
        )
        self.log_event(campaign, "model_registered", model_id=model_id, version=version)
        if deployed:
            self.deploy_model(model_id)
        return model_id

    def update_model(self, model_id: str, **fields: Any) -> None:
        """Set fields of a model document (metrics, weights id, state, pid, ...)."""
        if "deployed" in fields:
            raise ValueError("use deploy_model to change which version is deployed")
        fields["updated_at"] = now()
        self._retry(
            lambda: self.c["models"].update_one({"_id": model_id}, {"$set": fields}),
            "update model",
        )

    def get_model(self, model_id: str) -> dict | None:
        return self._retry(lambda: self.c["models"].find_one({"_id": model_id}), "get model")

    def deploy_model(self, model_id: str) -> None:
        """Make ``model_id`` the deployed version of its campaign/kind. Deploys first, then
        withdraws the others: a crash in between leaves two flagged, and ``deployed_model``
        picks the most recently deployed - never none."""
        doc = self._retry(lambda: self.c["models"].find_one({"_id": model_id}), "read model")
        if doc is None:
            raise KeyError(f"no model {model_id!r}")
        t = now()
        self._retry(
            lambda: self.c["models"].update_one(
                {"_id": model_id}, {"$set": {"deployed": True, "deployed_at": t}}
            ),
            "deploy model",
        )
        others = [
            d["_id"]
            for d in self._retry(
                lambda: list(
                    self.c["models"].find(
                        {"campaign": doc["campaign"], "kind": doc["kind"], "deployed": True},
                        {"_id": 1},
                    )
                ),
                "find deployed",
            )
            if d["_id"] != model_id
        ]
        if others:
            self._retry(
                lambda: self.c["models"].update_many(
                    {"_id": {"$in": others}}, {"$set": {"deployed": False}}
                ),
                "withdraw models",
            )
        self.log_event(doc["campaign"], "model_deployed", model_id=model_id, version=doc["version"])

    def deployed_model(self, campaign: str, kind: str = "surrogate") -> dict | None:
        docs = self._retry(
            lambda: list(
                self.c["models"].find({"campaign": campaign, "kind": kind, "deployed": True})
            ),
            "deployed model",
        )
        return max(docs, key=lambda d: d.get("deployed_at") or d["updated_at"], default=None)

    def list_models(self, campaign: str, kind: str | None = None) -> list[dict]:
        spec: dict[str, Any] = {"campaign": campaign}
        if kind:
            spec["kind"] = kind
        return self._retry(
            lambda: list(self.c["models"].find(spec, sort=[("created_at", 1)])), "list models"
        )
