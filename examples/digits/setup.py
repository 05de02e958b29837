"""The digits trainer, packaged the way Vertex AI's Python package training expects."""

from setuptools import find_packages, setup

setup(
    name="trainer",
    version="0.1.0",
    packages=find_packages(include=["trainer", "trainer.*"]),
    # The executor image (sklearn-cpu.1-6) ships these; they are declared because the trainer imports
    # them directly (trainer/data.py uses numpy), and left unpinned so pip keeps the image's versions
    # (scikit-learn 1.6.1, the version the serving image loads the pickle with).
    install_requires=["scikit-learn", "numpy", "joblib", "google-cloud-storage"],
)
