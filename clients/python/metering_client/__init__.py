"""The orchestrator's client for the metering service: events, admissions, kill orders.

Depends only on httpx; see `metering_client.client` for the delivery guarantees.
"""

from metering_client.client import (
    OUTAGE_STATUSES,
    ActionsPage,
    AdmissionAnswer,
    Backpressure,
    ClientError,
    ClientStats,
    MeteringClient,
    MeteringUnavailable,
    Rejection,
    RequestRefused,
)

__all__ = [
    "OUTAGE_STATUSES",
    "ActionsPage",
    "AdmissionAnswer",
    "Backpressure",
    "ClientError",
    "ClientStats",
    "MeteringClient",
    "MeteringUnavailable",
    "Rejection",
    "RequestRefused",
]
