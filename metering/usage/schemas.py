"""The usage endpoints' response bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class UsagePoint(BaseModel):
    start: str
    end: str
    vcpu_seconds: str
    gib_seconds: str
    cost: str


class UsageTotals(BaseModel):
    vcpu_seconds: str
    gib_seconds: str
    cost: str


class UsageOut(BaseModel):
    team_id: str
    granularity: str
    currency: str
    series: list[UsagePoint]
    totals: UsageTotals


class ExecutionOut(BaseModel):
    execution_id: str
    sandbox_id: str
    team_id: str
    template_id: str | None
    state: Literal["running", "ended"]
    started_at: str
    start_kind: str | None
    ended_at: str | None
    end_kind: str | None
    end_reason: str | None
    end_inferred: bool
    vcpu: int | None
    memory_mib: int | None
    disk_mib: int | None
    last_event_at: str
    vcpu_seconds: str
    gib_seconds: str
    cost: str


class ExecutionPage(BaseModel):
    data: list[ExecutionOut]
    next_cursor: str | None


class MetricPoint(BaseModel):
    minute: str
    samples: int
    cpu_pct_avg: str | None
    cpu_pct_max: str | None
    memory_used_mib_avg: str | None
    memory_used_mib_max: int | None


class MetricsOut(BaseModel):
    sandbox_id: str
    data: list[MetricPoint]
    next_cursor: str | None = None
