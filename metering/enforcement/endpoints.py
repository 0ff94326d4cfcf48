"""HTTP for enforcement: the durable kill-order feed the orchestrator polls."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from metering.api.deps import PrincipalDep, SessionDep
from metering.enforcement import service
from metering.enforcement.schemas import KillOrderPage

router = APIRouter(tags=["enforcement"])


@router.get("/v1/enforcement/actions", response_model=KillOrderPage)
def list_actions(
    session: SessionDep, principal: PrincipalDep,
    after: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> KillOrderPage:
    """Kill orders, oldest first, each issued once per execution with a stable id.

    Tail it: keep the last `next_cursor` and ask again with `after=` it. The same orders are
    also posted, signed, to the configured orchestrator webhook.
    """
    principal.require("ingest")
    return service.actions_page(session, after, limit)
