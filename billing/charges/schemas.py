"""A charge explained, as the API shows it: exact decimal strings throughout."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from billing.invoices.schemas import LineOut


class LineExecutionOut(BaseModel):
    execution_id: str
    sandbox_id: str
    template_id: str | None
    started_at: str
    ended_at: str | None = Field(description="null while it runs")
    end_inferred: bool = Field(description="no end event: it ended at its newest event")
    running: bool
    vcpu: int = Field(description="allocated at its start")
    memory_mib: int = Field(description="allocated at its start")
    seconds: str = Field(description="its time inside the line's service period")
    vcpu_seconds: str
    gib_seconds: str
    quantity: str = Field(description="in the line's unit; they add up to the line's quantity")
    cost: str = Field(description="exact, unrounded, at the line's unit price")


class LineExecutionsPage(BaseModel):
    line: LineOut
    as_of: str = Field(description="the events as they stood then (the invoice's close)")
    data: list[LineExecutionOut]
    next_cursor: str | None


class LifecycleEventOut(BaseModel):
    id: str
    source: str
    type: str
    time: str
    data: dict[str, Any]


class AllocationOut(BaseModel):
    start: str
    end: str | None = Field(description="null: until the execution ends")
    vcpu: int
    memory_mib: int


class ExecutionEventsOut(BaseModel):
    execution_id: str
    team_id: str
    sandbox_id: str
    data: list[LifecycleEventOut]
    allocation: list[AllocationOut]
    next_cursor: str | None
