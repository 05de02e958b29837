"""Vertex AI's prebuilt training containers: the only ``python_package_spec.executor_image_uri`` values it takes.

Source: "Prebuilt containers for custom training",
https://cloud.google.com/vertex-ai/docs/training/pre-built-containers (read 2026-11 from the copy at
docs.cloud.google.com/gemini-enterprise-agent-platform/machine-learning/training/pre-built-containers).
Every image is published as ``{us,europe,asia}-docker.pkg.dev/vertex-ai/training/NAME:latest`` and the
page says: "Using image names without the latest tag isn't supported."

The stand-in cannot run these images (they are Deep Learning Containers of several GB), so each maps
to the PyPI pins installed into the job's clean virtual environment instead: the framework and the
companions the page lists under "Included dependencies", at the documented version when it has a
wheel for this interpreter (Python 3.11; the images use 3.7 or 3.10), with ``--only-binary``, so an
image whose framework has no such wheel fails fast with pip's own message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SOURCE = "https://cloud.google.com/vertex-ai/docs/training/pre-built-containers"
REGIONS = ("us", "europe", "asia")
_URI = re.compile(r"^(?P<region>[a-z]+)-docker\.pkg\.dev/vertex-ai/training/(?P<name>[a-z0-9.-]+):(?P<tag>[\w.-]+)$")

# The companions listed for the scikit-learn 1.6 / XGBoost 2.1 images (numpy 1.26.4, pandas 2.2.3,
# scipy 1.15.2, joblib 1.4.2, google-cloud-storage 2.19.0, ...); xgboost, bigquery and the web stack
# are left out to keep the first install small (a trainer using them declares them).
_SKLEARN_16 = (
    "scikit-learn==1.6.1",
    "numpy==1.26.4",
    "pandas==2.2.3",
    "scipy==1.15.2",
    "joblib==1.4.2",
    "google-cloud-storage==2.19.0",
)
# The 1.0 / 0.23 / XGBoost 1.x images document numpy 1.18.5, pandas 1.0.4, scipy 1.4.1, joblib
# 0.15.1 and google-cloud-storage 1.29.0: none has a Python 3.11 wheel, so only the framework is pinned.
_OLD_COMPANIONS = ("joblib", "google-cloud-storage")


@dataclass(frozen=True)
class ExecutorImage:
    """One prebuilt training container (all three regional URIs) and what it preinstalls."""

    name: str
    """The image name under ``vertex-ai/training/``, e.g. ``sklearn-cpu.1-6``."""
    framework: str
    """The ML framework and version the page documents."""
    requirements: tuple[str, ...]
    """The pip requirements installed locally in its place."""

    def uris(self) -> tuple[str, ...]:
        """The image's URIs in every Artifact Registry location."""
        return tuple(f"{region}-docker.pkg.dev/vertex-ai/training/{self.name}:latest" for region in REGIONS)


def _images() -> dict[str, ExecutorImage]:
    images: list[ExecutorImage] = []

    def add(names: str, framework: str, *requirements: str) -> None:
        images.extend(ExecutorImage(name, framework, requirements) for name in names.split())

    add("sklearn-cpu.1-6 sklearn-gpu.1-6", "scikit-learn 1.6.1 (Python 3.10)", *_SKLEARN_16)
    # Not in the page as read (it lists 1.6, 1.0 and 0.23): 1.3 was listed before 1.6 replaced it
    # and is what examples/digits uses; keep it until its end of availability is confirmed.
    add("sklearn-cpu.1-0 sklearn-gpu.1-0", "scikit-learn 1.0 (Python 3.10)", "scikit-learn==1.0.*", *_OLD_COMPANIONS)
    add("scikit-learn-cpu.0-23", "scikit-learn 0.23.1 (Python 3.7)", "scikit-learn==0.23.1", *_OLD_COMPANIONS)
    add("xgboost-cpu.2-1 xgboost-gpu.2-1", "XGBoost 2.1.3 (Python 3.10)", "xgboost==2.1.3", *_SKLEARN_16)
    add(
        "xgboost-cpu.1-6 xgboost-gpu.1-6",
        "XGBoost 1.6.2 (Python 3.10)",
        "xgboost==1.6.2",
        "scikit-learn",
        *_OLD_COMPANIONS,
    )
    add("xgboost-cpu.1-1", "XGBoost 1.1.1 (Python 3.7)", "xgboost==1.1.1", "scikit-learn", *_OLD_COMPANIONS)
    for minor in (17, 16, 15, 14, 13, 12, 11, 9, 8):
        add(
            f"tf-cpu.2-{minor}.py310 tf-gpu.2-{minor}.py310",
            f"TensorFlow 2.{minor} (Python 3.10)",
            f"tensorflow==2.{minor}.*",
        )
    add("tf-tpu.2-15.cp310", "TensorFlow 2.15 (TPU)", "tensorflow==2.15.*")
    add("tf-tpu.2-12", "TensorFlow 2.12 (TPU)", "tensorflow==2.12.*")
    for minor in (11, 9, 8, 7, 6, 5, 4, 3, 2, 1):
        add(f"tf-cpu.2-{minor} tf-gpu.2-{minor}", f"TensorFlow 2.{minor} (Python 3.7)", f"tensorflow==2.{minor}.*")
    add("tf-cpu.1-15 tf-gpu.1-15", "TensorFlow 1.15 (Python 3.7)", "tensorflow==1.15.*")
    for minor in (4, 3, 2, 1, 0):
        add(
            f"pytorch-xla.2-{minor}.py310 pytorch-gpu.2-{minor}.py310",
            f"PyTorch 2.{minor} (Python 3.10)",
            f"torch==2.{minor}.*",
        )
    add("pytorch-tpu.2-2.cp310 pytorch-tpu.2-1.cp310", "PyTorch (TPU, Python 3.10)", "torch==2.2.*")
    add("pytorch-tpu.2-0", "PyTorch 2.0 (TPU, Python 3.8)", "torch==2.0.*")
    add("pytorch-gpu.1-13.py310 pytorch-gpu.1-13", "PyTorch 1.13", "torch==1.13.*")
    add("pytorch-gpu.1-12.py310 pytorch-gpu.1-12", "PyTorch 1.12", "torch==1.12.*")
    for minor in (11, 10, 9, 7, 6):
        add(f"pytorch-xla.1-{minor} pytorch-gpu.1-{minor}", f"PyTorch 1.{minor} (Python 3.7)", f"torch==1.{minor}.*")
    add("pytorch-cpu.1-4 pytorch-gpu.1-4", "PyTorch 1.4 (Python 3.7)", "torch==1.4.*")
    return {image.name: image for image in images}


IMAGES: dict[str, ExecutorImage] = _images()
"""Every prebuilt training container by name (the part after ``vertex-ai/training/``, without the tag)."""


class UnknownExecutorImage(ValueError):
    """The URI is not one of Vertex AI's prebuilt training containers; the message says why."""


def executor_image(uri: str) -> ExecutorImage:
    """The prebuilt container this URI names, or UnknownExecutorImage explaining the refusal."""
    match = _URI.match(uri)
    if match is None or match["region"] not in REGIONS or match["name"] not in IMAGES:
        raise UnknownExecutorImage(
            f"{uri!r} is not one of Vertex AI's prebuilt training containers "
            f"(REGION-docker.pkg.dev/vertex-ai/training/NAME:latest, REGION one of {', '.join(REGIONS)}; "
            f"see {SOURCE}). A custom image belongs in worker_pool_specs[].container_spec.image_uri."
        )
    if match["tag"] != "latest":
        raise UnknownExecutorImage(
            f"{uri!r}: prebuilt training containers are only supported with the 'latest' tag ({SOURCE})."
        )
    return IMAGES[match["name"]]
