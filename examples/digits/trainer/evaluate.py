"""The evaluator: metrics of a fitted classifier on the held-out split."""

from __future__ import annotations

from typing import Any

from sklearn.metrics import accuracy_score, f1_score


def evaluate(model: Any, features: Any, labels: Any) -> dict[str, float]:
    """Accuracy and macro F1 on data the model never saw."""
    predicted = model.predict(features)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro")),
    }
