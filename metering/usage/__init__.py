"""Usage, metering's read side: what teams used and what it cost, exact to the millisecond.

Other features (admissions, enforcement, billing) use only the names below; the SQL
predicates of a running execution (`OPEN`, `RUNNING`, `running()`) and of a segment's billed
end (`SEGMENT_END`) are defined here once, for every query that needs them.
"""

from metering.usage.bulk import TeamUsage, usage_totals
from metering.usage.repository import (
    OPEN,
    RUNNING,
    SEGMENT_END,
    BucketUsage,
    bucket_usage_many,
    is_running,
    running,
    running_allocations_from_rows,
    running_allocations_read,
)
from metering.usage.schemas import ExecutionOut, MetricsOut, UsageOut
from metering.usage.service import (
    PricedBucket,
    PricedUsage,
    bucket_bounds,
    execution_rows,
    executions_page,
    now_ms_truncated,
    period_bounds,
    price_periods,
    price_totals,
    priced_bounds,
    priced_usage,
    sandbox_metrics,
    schedule_for,
    usage_by_price_period,
    usage_series,
)

__all__ = [
    "OPEN",
    "RUNNING",
    "SEGMENT_END",
    "BucketUsage",
    "ExecutionOut",
    "MetricsOut",
    "PricedBucket",
    "PricedUsage",
    "TeamUsage",
    "UsageOut",
    "bucket_bounds",
    "bucket_usage_many",
    "execution_rows",
    "executions_page",
    "is_running",
    "now_ms_truncated",
    "period_bounds",
    "price_periods",
    "price_totals",
    "priced_bounds",
    "priced_usage",
    "running",
    "running_allocations_from_rows",
    "running_allocations_read",
    "sandbox_metrics",
    "schedule_for",
    "usage_by_price_period",
    "usage_series",
    "usage_totals",
]
