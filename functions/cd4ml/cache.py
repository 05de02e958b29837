"""Train only what changed: content keys for trainings and images, and the decisions that use them.

Kubeflow's and Vertex's step caches key on inputs by URI, so changed data behind the same path is served from
cache (kubeflow/pipelines#4857). cd4ml keys on content instead:

- a training: the model, the dataset's sha256, each trainer package's content hash as Cloud Storage reports it
  (``md5Hash``, else ``crc32c``: the object resource's own fields) and the training spec (executor image or
  container, module, args, hyperparameters, machine). The index is ``cache/training-{key}`` in Firestore, written
  by watch_training when a training succeeds and read by submit_training inside its exactly-once claim;
- an image: the model, the model's sha256, the serving files' content hashes, the base image and the serving
  spec (Dockerfile path, smoke test). Found as a run of the model whose image with that key was built and pushed.

The decisions (``switch``, ``reused``, ``skip``) are pure; every one is recorded on the run under ``cache``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cd4ml.manifest import Manifest

if TYPE_CHECKING:
    from cd4ml.runtime import Context

TRAINING = "training"
IMAGE = "image"


def _key(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Switch:
    """Whether a run uses the caches (and may be skipped), and what turned them off."""

    enabled: bool
    disabled_by: str = ""

    def to_record(self) -> dict[str, Any]:
        return {"cache.enabled": self.enabled, **({"cache.disabled_by": self.disabled_by} if self.disabled_by else {})}


def switch(manifest: Mapping[str, Any], no_cache: bool) -> Switch:
    """Off when the request says ``no_cache`` (``cd4ml run --no-cache``) or the manifest says ``cache: false``."""
    if no_cache:
        return Switch(False, "the request (--no-cache)")
    if manifest.get("cache", True) is False:
        return Switch(False, "the manifest (cache: false)")
    return Switch(True)


def enabled(run_cache: Mapping[str, Any]) -> bool:
    """The run's switch (its ``cache`` record) as fetch_data recorded it; off for a run it did not open (recorded
    before the cache existed, or opened by hand): a cache is used only where the run's request was read."""
    return bool(run_cache.get("enabled", False))


def training_spec(manifest: Manifest) -> dict[str, Any]:
    """What the job runs, as far as it decides the model: not the timeout, not the run's own paths."""
    t = manifest.training
    runs = (
        {"python_package": {"executor_image": t.executor_image, "python_module": t.python_module}}
        if t.python_module
        else {"container": {"image_uri": t.container_image, "command": list(t.container_command)}}
    )
    return {
        **runs,
        "args": list(t.args),
        "hyperparameters": {k: t.hyperparameters[k] for k in sorted(t.hyperparameters)},
        "machine_type": t.machine_type,
        "replica_count": t.replica_count,
    }


def training_key(model: str, dataset_sha256: str, packages: Mapping[str, str], spec: Mapping[str, Any]) -> str:
    """The training cache key; ``packages`` maps each package uri to its content hash."""
    return _key(
        {
            "kind": TRAINING,
            "model": model,
            "dataset_sha256": dataset_sha256,
            "packages": [packages[u] for u in sorted(packages)],
            "spec": dict(spec),
        }
    )


def object_hash(blob: Any) -> str:
    """The content hash Cloud Storage keeps for an object (``md5Hash``; composite objects have only ``crc32c``)."""
    if blob is None:
        return ""
    if blob.md5_hash:
        return f"md5:{blob.md5_hash}"
    return f"crc32c:{blob.crc32c}" if blob.crc32c else ""


def reused(key: str, entry: Mapping[str, Any] | None, on: bool) -> tuple[str, str]:
    """(reused_from, why): the earlier run whose training to reuse ("" to train), and the reason, for the record."""
    if not on:
        return "", "cache off"
    if not key:
        return "", "no cache key: a trainer package's content hash could not be read"
    if not entry or not entry.get("run_id") or not entry.get("model_artifact"):
        return "", "no earlier successful training with this key"
    return str(entry["run_id"]), f"run {entry['run_id']} trained with the same key"


def skip(model_sha256: str, champion: Mapping[str, Any] | None, on: bool) -> tuple[str, str]:
    """(champion run, why) when the run's model is the champion's, byte for byte; ("", "") to go on."""
    if not on or not champion:
        return "", ""
    theirs = str((champion.get("model_artifact") or {}).get("sha256", ""))
    if theirs != model_sha256:
        return "", ""
    run = str(champion.get("run_id", ""))
    return run, f"the model (sha256 {model_sha256[:12]}…) is already the champion's, run {run}: nothing new to deliver"


def image_key(manifest: Manifest, model_sha256: str, serving: Iterable[tuple[str, str]], checker_sha256: str) -> str:
    """The build cache key: model, model sha256, serving files (name, content hash), base image, serving spec."""
    raw = manifest.raw.get("serving") or {}
    return _key(
        {
            "kind": IMAGE,
            "model": manifest.name,
            "model_sha256": model_sha256,
            "serving": sorted(serving),
            "base_image": manifest.base_image,
            "dockerfile": manifest.dockerfile,
            "smoke": raw.get("smoke"),
            "checker_sha256": checker_sha256,
        }
    )


def reusable_image(key: str, candidates: Iterable[Mapping[str, Any]], run_id: str) -> Mapping[str, Any] | None:
    """The first other run whose image with ``key`` was built (SUCCESS) and pushed (a digest reference)."""
    for doc in candidates:
        image = doc.get("image") or {}
        if (
            doc.get("run_id") != run_id
            and ((doc.get("cache") or {}).get(IMAGE) or {}).get("key") == key
            and image.get("status") == "SUCCESS"
            and "@sha256:" in str(image.get("reference", ""))
        ):
            return doc
    return None


# --- the acts (Firestore and Cloud Storage); the decisions above are what the tests pin -----------------------


def package_hashes(ctx: Context, uris: Iterable[str]) -> dict[str, str] | None:
    """Each package's content hash, None when one cannot be read (then the run trains: no key, no guess)."""
    from google.api_core.exceptions import GoogleAPICallError

    from cd4ml.gcs import GcsPath

    out: dict[str, str] = {}
    for uri in uris:
        path = GcsPath.parse(uri)
        try:
            found = object_hash(ctx.storage.bucket(path.bucket).get_blob(path.name))
        except GoogleAPICallError:
            return None
        if not found:
            return None
        out[uri] = found
    return out


def check_image(
    ctx: Context, run_id: str, manifest: Manifest, model_sha256: str, run_cache: Mapping[str, Any]
) -> dict[str, Any] | None:
    """build_image's cache check: the reused image (the build's result) on a hit; None (key noted) to build."""
    from cd4ml import smoke
    from cd4ml.gcs import GcsPath, list_objects

    if not enabled(run_cache):  # the run's switch, as the record build_image read holds it (fetch_data set it)
        ctx.ledger.note(run_id, {"cache.image": {"decision": "off", "reason": "cache off"}})
        return None
    serving = GcsPath(ctx.settings.artifact_bucket, f"serving/{manifest.name}/")
    files = [(b.name[len(serving.name) :], object_hash(b)) for b in list_objects(ctx.storage, serving)]
    checker = hashlib.sha256(Path(smoke.SCRIPT).read_bytes()).hexdigest() if manifest.smoke else ""
    key = image_key(manifest, model_sha256, files, checker)
    twin = reusable_image(key, ctx.ledger.with_field(f"cache.{IMAGE}.key", key), run_id)
    if twin is None:
        ctx.ledger.note(run_id, {"cache.image": {"key": key, "decision": "built", "reason": "no image with this key"}})
        return None
    image = dict(twin["image"])
    return {
        "build_id": str(image.get("build_id") or f"reused-{twin['run_id']}"),
        "context": "",
        "reused_from": str(twin["run_id"]),
        "key": key,
        "reference": str(image["reference"]),
        "tag": str(image.get("tag", "")),
    }


def continue_with_image(ctx: Context, run_id: str, model: str, result: Mapping[str, Any]) -> None:
    """A build cache hit: image.built then image.pushed, as after Cloud Build and the registry, marked reused."""
    from cd4ml import events
    from cd4ml.outcome import Outcome

    reference, twin = str(result["reference"]), str(result["reused_from"])
    image, digest = reference.split("@", 1)
    why = {
        "cache.image": {"key": result["key"], "decision": "reused", "reused_from": twin, "reason": f"image of {twin}"}
    }
    ctx.conclude(
        run_id,
        Outcome.event(
            events.IMAGE_BUILT,
            {"model": model, "build_id": result["build_id"], "image": image, "digest": digest, "reused_from": twin},
            {"image.status": "SUCCESS", "image.digest": digest, "image.build_id": result["build_id"], **why},
        ),
    )
    ctx.conclude(
        run_id,
        Outcome.event(
            events.IMAGE_PUSHED,
            {"model": model, "reference": reference, "tag": result["tag"], "reused_from": twin},
            {"image.reference": reference, "image.tag": result["tag"]},
        ),
    )
