"""What the enforcement feed answers (pydantic), so the OpenAPI document is complete."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class KillOrderOut(BaseModel):
    id: str = Field(description="Stable id of the kill order (`ko_...`), the same on the "
                                "feed and the webhook.")
    team_id: str
    sandbox_id: str
    execution_id: str
    action: Literal["kill"]
    reason: Literal["max_duration", "credit_exhausted", "spend_limit_reached", "team_blocked"]
    issued_at: str = Field(description="RFC 3339, UTC.")


class KillOrderPage(BaseModel):
    data: list[KillOrderOut]
    next_cursor: str | None = Field(
        description="Pass as `after` for the orders issued after this page; null only on an "
                    "empty page (ask again later with the same `after`).")
