"""The limits are declared once (`PlanLimits`): every edge that carries them takes its fields
from there, and billing's typed read of a team is the only thing that crosses back into it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from billing.accounts.schemas import OverrideIn
from billing.dashboard.service import LIMIT_LABELS
from billing.models import metadata
from billing.plans import repository as plans_repo
from billing.plans.schemas import LimitsOut, LimitsPatch, PlanVersionIn, PlanVersionOut
from billing.plans.service import PlanBilling
from metering.core.limits import LIMIT_FIELDS, LIMIT_MINIMUMS, LimitOverride
from metering.plugins import TeamRead


def test_the_api_models_and_tables_carry_exactly_the_core_limits() -> None:
    assert tuple(LimitsOut.model_fields) == LIMIT_FIELDS
    assert tuple(LimitsPatch.model_fields) == LIMIT_FIELDS
    for model in (PlanVersionOut, PlanVersionIn, OverrideIn):
        assert set(LIMIT_FIELDS) <= set(model.model_fields)
    versions = metadata.tables["plan_versions"].columns
    overrides = metadata.tables["team_limit_overrides"].columns
    for name in LIMIT_FIELDS:
        assert not versions[name].nullable  # every version states every limit
        assert overrides[name].nullable  # an override sets some
        assert name in plans_repo.CONTEXT_SQL
    assert set(LIMIT_LABELS) == set(LIMIT_FIELDS)  # the dashboard shows every limit


def test_a_patch_takes_each_limit_from_its_least_value() -> None:
    for name in LIMIT_FIELDS:
        least = LIMIT_MINIMUMS[name]
        assert getattr(LimitsPatch.model_validate({name: least}), name) == least
        with pytest.raises(ValidationError):
            LimitsPatch.model_validate({name: least - 1})
    assert LimitsPatch().model_dump(exclude_none=True) == {}


def test_an_override_names_only_known_limits() -> None:
    override = LimitOverride(concurrency=5, max_vcpu=None)
    assert override.values() == {"concurrency": 5}
    assert override == LimitOverride(concurrency=5)
    assert override != LimitOverride(concurrency=5, start=datetime(2026, 11, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="unknown limit field"):
        LimitOverride(gpus=1)
    with pytest.raises(ValueError, match="integer >= 0"):
        LimitOverride(concurrency=-1)


def test_billing_takes_back_only_its_own_read_of_a_team() -> None:
    now = datetime(2026, 11, 3, tzinfo=UTC)
    with pytest.raises(TypeError, match="not billing's read"):
        PlanBilling().admission_from_read("team_1", now, TeamRead())
