"""cd4ml: continuous training and delivery of ML models on Google Cloud, as small functions."""

__version__ = "0.1.0"
