"""The digits trainer, packaged the way Vertex AI's Python package training expects."""

from setuptools import find_packages, setup

setup(
    name="trainer",
    version="0.1.0",
    packages=find_packages(include=["trainer", "trainer.*"]),
    install_requires=["scikit-learn", "joblib", "google-cloud-storage"],
)
