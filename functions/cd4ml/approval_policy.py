"""The deployed approval policy: which models need a person's approval, who approves, and how long a request stands.

Only the platform team sets it (setting ``CD4ML_APPROVAL_POLICY``: Terraform derives it from the manifests in the
repository; the local stack from the manifests it deploys). A model team's ``cd4ml model push`` writes the bucket's
manifest, never this: a manifest pushed without its ``approval`` block, or naming other approvers, changes nothing.

The value is JSON, ``{"MODEL": {"approvers": ["user:EMAIL", ...], "expires_after": "72h"}, ...}`` (only models
that require approval), or ``file:PATH`` of such JSON (the local stack's, rewritten when it deploys a model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cd4ml.errors import InvalidSettings
from cd4ml.manifest import Approval, duration


@dataclass(frozen=True)
class Policy:
    """The approval rule of each model that requires one; a model absent from it requires none."""

    rules: Mapping[str, Approval]

    def rule(self, model: str) -> Approval | None:
        return self.rules.get(model)

    @classmethod
    def of(cls, value: str) -> Policy:
        """The policy a setting's value names: JSON, ``file:PATH`` (read now), or empty (no model requires approval)."""
        text = value
        if value.startswith("file:"):
            path = Path(value.removeprefix("file:"))
            text = path.read_text() if path.is_file() else ""
        if not text.strip():
            return cls(rules={})
        try:
            raw = json.loads(text)
            return cls(rules={str(m): _rule(r) for m, r in dict(raw).items()})
        except (ValueError, TypeError, KeyError) as error:
            raise InvalidSettings(
                f"CD4ML_APPROVAL_POLICY is not a policy ({error}): expected JSON "
                '{"MODEL": {"approvers": ["user:EMAIL"], "expires_after": "72h"}} or file:PATH of it'
            ) from error

    @classmethod
    def from_manifests(cls, manifests: Mapping[str, Mapping[str, Any]]) -> Policy:
        """What Terraform derives from the repository's manifests (by model name): their ``approval`` blocks."""
        rules = {}
        for model, document in manifests.items():
            raw = document.get("approval") or {}
            if raw.get("required"):
                rules[model] = Approval(
                    approvers=tuple(raw["approvers"]), expires_after=duration(str(raw.get("expires_after", "72h")))
                )
        return cls(rules=rules)

    def to_json(self) -> str:
        return json.dumps(
            {m: {"approvers": list(r.approvers), "expires_after": _text(r)} for m, r in sorted(self.rules.items())},
            sort_keys=True,
        )


def _rule(raw: Mapping[str, Any]) -> Approval:
    approvers = tuple(str(a) for a in raw["approvers"])
    if not approvers:
        raise ValueError("a model's rule names no approver")
    return Approval(approvers=approvers, expires_after=duration(str(raw.get("expires_after", "72h"))))


def _text(rule: Approval) -> str:
    seconds = int(rule.expires_after.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def difference(model: str, manifest_rule: Approval | None, policy: Policy) -> str | None:
    """One line saying how a manifest's ``approval`` block differs from the deployed policy; None when it agrees."""
    deployed = policy.rule(model)
    if manifest_rule == deployed:
        return None

    def said(rule: Approval | None) -> str:
        if rule is None:
            return "no approval"
        return f"approval by {', '.join(rule.approvers)} within {_text(rule)}"

    return (
        f"model {model}: the manifest asks {said(manifest_rule)} but the deployed policy requires {said(deployed)}; "
        "runs follow the deployed policy (the platform team changes it with `terraform apply`)"
    )
