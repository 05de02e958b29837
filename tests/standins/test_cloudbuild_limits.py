"""The Cloud Build stand-in's step-arg limit is the service's current one: 10,000 characters (Cloud Build's own
refusal "build step 1 arg 1 too long (max: 10000)"; validate.go's older 4000 no longer applies)."""

from __future__ import annotations

import pytest
from google.cloud.devtools import cloudbuild_v1
from local_emulator.cloudbuild.validation import InvalidBuild, validate


def _build(arg: str) -> cloudbuild_v1.Build:
    return cloudbuild_v1.Build(steps=[cloudbuild_v1.BuildStep(name="gcr.io/cloud-builders/docker", args=[arg])])


def test_a_step_arg_of_10000_characters_is_accepted_and_one_more_refused() -> None:
    validate(_build("x" * 10000), {})
    with pytest.raises(InvalidBuild, match=r"build step 0 arg 0 too long \(max: 10000\)"):
        validate(_build("x" * 10001), {})
