"""Usage, metering's read side: what teams used and what it cost, exact to the millisecond.

Other features (admissions, enforcement, billing) use only the names below; the SQL
predicates of a running execution (`OPEN`, `FRESH`) and of a segment's billed end
(`SEGMENT_END`) are defined here once, for every query that needs them.
"""

from metering.usage.bulk import TeamUsage, usage_totals
from metering.usage.repository import (
    FRESH,
    OPEN,
    SEGMENT_END,
    BucketUsage,
    bucket_usage,
    execution_usage,
    list_executions,
    sandbox_metrics,
    sandbox_team,
)
from metering.usage.service import (
    PricedBucket,
    PricedUsage,
    bucket_bounds,
    now_ms_truncated,
    priced_usage,
    schedule_for,
    usage_by_price_period,
)

__all__ = [
    "FRESH",
    "OPEN",
    "SEGMENT_END",
    "BucketUsage",
    "PricedBucket",
    "PricedUsage",
    "TeamUsage",
    "bucket_bounds",
    "bucket_usage",
    "execution_usage",
    "list_executions",
    "now_ms_truncated",
    "priced_usage",
    "sandbox_metrics",
    "sandbox_team",
    "schedule_for",
    "usage_by_price_period",
    "usage_totals",
]
