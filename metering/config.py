"""The service's one configuration object, read from the environment (see README's table)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from metering.core import clock


class KeyLimit(BaseModel):
    """What one API key may use: `rate` requests a second with bursts of `burst` (0: no rate
    limit) and `concurrency` requests in flight at once (0: no limit)."""

    rate: float = Field(default=0, ge=0)  # float-ok: requests per second
    burst: int = Field(default=0, ge=0)
    concurrency: int = Field(default=0, ge=0)


def _default_key_limits() -> dict[str, KeyLimit]:
    # The orchestrator's key is sized for a fleet; people's keys for a dashboard and scripts.
    # `unresolved` is any key this process has not yet seen authenticated (ingest keys on the
    # admissions fast path among them), so it is as generous as `ingest`.
    return {
        "ingest": KeyLimit(rate=5000, burst=10_000, concurrency=256),
        "unresolved": KeyLimit(rate=5000, burst=10_000, concurrency=256),
        "team": KeyLimit(rate=20, burst=40, concurrency=4),
        "finance": KeyLimit(rate=100, burst=200, concurrency=8),
        "admin": KeyLimit(rate=100, burst=200, concurrency=8),
    }


class Settings(BaseSettings):
    """Every knob of the service; environment variables are `METERING_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "METERING_DATABASE_URL")
    )
    data_dir: Path = Path(".metering-data")
    bootstrap_admin_key: str | None = None
    log_level: str = "INFO"

    # Ingest
    max_batch_events: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    future_tolerance_s: int = 300
    # Events older than this are refused (`too_old`) unless a finance or admin key backfills.
    max_event_age_days: int = Field(default=400, ge=1)
    stale_after_s: int = 60
    # Per-minute samples: the current month and this many before it are kept; older months
    # are dropped once closed and invoiced (billing.retention). At least 1.
    sample_retention_months: int = Field(default=3, ge=1)

    # Default prices (E2B's public ones), used where a plan version does not say otherwise.
    price_vcpu_second: Decimal = Decimal("0.000014")
    price_gib_second: Decimal = Decimal("0.0000045")
    currency: str = "usd"

    # Limits and enforcement
    lease_ttl_s: int = 90
    # An admission's lease commits without waiting for its WAL to reach disk: under ingest's
    # writes that wait is a large part of an admission's tail (docs/scaling.md). A database
    # crash can then forget the leases of its last ~0.6 s (their slots free early; a retry
    # is decided afresh). True: every lease waits for the disk, as every other write does.
    admission_durable_commit: bool = False
    default_plan: str = "hobby"
    orchestrator_webhook_url: str | None = None
    orchestrator_webhook_secret: str | None = None
    webhook_max_age_s: int = 24 * 3600

    # Month close and Stripe
    close_grace_s: int = 2 * 3600
    dunning_days: int = 7
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_webhook_tolerance_s: int = 300

    # Bulkheads and limits (see docs/operations.md, "Bulkheads and limits")
    key_limits: dict[str, KeyLimit] = Field(default_factory=_default_key_limits)
    key_limit_overrides: dict[str, KeyLimit] = Field(default_factory=dict)  # by key id
    read_concurrency: int = Field(default=24, ge=1)  # reads in flight per API process
    # Reads with a long answer (a series of more than 1,000 points) running at once per API
    # process; the others wait their turn on the event loop, holding no thread.
    long_read_concurrency: int = Field(default=1, ge=1)
    # Long reads run in helper processes (`long_read_concurrency` per API process) at this
    # CPU priority (nice), so they hold no API process's interpreter lock and get the CPU the
    # API processes leave; `long_read_helpers = false` runs them in the API process's threads.
    long_read_helpers: bool = True
    long_read_nice: int = Field(default=10, ge=0, le=19)
    read_pool_size: int = Field(default=8, ge=1)  # connections for reads (+ as many overflow)
    read_pool_timeout_s: float = Field(default=2.0, gt=0)  # float-ok: wait for a connection
    read_statement_timeout_ms: int = Field(default=15_000, ge=100)
    orchestrator_threads: int = Field(default=32, ge=1)  # worker threads ingest alone uses
    # Event batches are parsed, validated and stored in this many helper processes per API
    # process, at this CPU priority (nice), so that the API process's interpreter lock and
    # the CPU serve admissions first; 0 does it in the API process's worker threads.
    ingest_helpers: int = Field(default=3, ge=0, le=64)
    ingest_helper_nice: int = Field(default=10, ge=0, le=19)
    # Connections: slow or idle clients are closed; the process takes at most this many.
    header_timeout_s: float = Field(default=10.0, gt=0, le=60)  # float-ok: seconds
    body_timeout_s: float = Field(default=30.0, gt=0, le=60)  # float-ok: seconds
    max_connections: int = Field(default=4096, ge=1)

    # Worker
    run_scheduler: bool = True
    # CPU priority (nice) of every job's thread but the enforcement sweep and the webhook
    # delivery; 0 runs them at the process's own priority.
    jobs_nice: int = Field(default=10, ge=0, le=19)
    sweep_interval_s: float = 1.0  # float-ok
    fold_interval_s: float = 5.0  # float-ok
    close_interval_s: float = 600.0  # float-ok: how often the worker looks for a month to close
    stripe_sync_interval_s: float = 60.0  # float-ok: how often the worker syncs to Stripe
    metrics_port: int | None = None  # `metering worker` serves /metrics here when set

    # Simulations and tests only: `<real anchor>,<simulated anchor>,<rate>` (metering.core.clock)
    sim_clock: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def configure_clock(settings: Settings | None = None) -> None:
    """Start-up: put this process on the clock the settings name (`METERING_SIM_CLOCK`, shared
    by every process started with it), or on the real one."""
    value = ((settings or get_settings()).sim_clock or "").strip()
    clock.configure(clock.SimClock.parse(value) if value else None)
