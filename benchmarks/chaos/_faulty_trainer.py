"""A trainer that fails as the chaos session asks (``--fault=crash|no-model|two-models|unbound-metrics``).

Copied into a chaos model as ``trainer/task.py``; with no fault it is the bench's nearest-centroid trainer.
"""

from __future__ import annotations

import hashlib
import json
import sys

from trainer import centroid


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fault = next((a.split("=", 1)[1] for a in args if a.startswith("--fault=")), "")
    if fault == "crash":
        raise SystemExit("chaos: the trainer crashed on purpose")
    if not fault:
        return int(centroid.main(args))
    model = json.dumps({"centroids": {}}).encode()
    sha256 = hashlib.sha256(b"another model" if fault == "unbound-metrics" else model).hexdigest()
    if fault != "no-model":
        centroid._save(model, "model.json")
    if fault == "two-models":
        centroid._save(model, "model.pkl")
    centroid._save(json.dumps({"metrics": {"accuracy": 0.99}, "model_sha256": sha256}).encode(), "metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
