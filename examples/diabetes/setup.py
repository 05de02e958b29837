"""The diabetes trainer, packaged the way Vertex AI's Python package training expects."""

from setuptools import find_packages, setup

setup(
    name="trainer",
    version="0.1.0",
    packages=find_packages(include=["trainer", "trainer.*"]),
    # The executor image (sklearn-cpu.1-6) ships these; unpinned so pip keeps the image's versions.
    install_requires=["scikit-learn", "numpy", "google-cloud-storage"],
)
