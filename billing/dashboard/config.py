"""The dashboard's own settings (`METERING_DASHBOARD_*`), apart from the service's `Settings`."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class DashboardSettings(BaseSettings):
    """Environment: `METERING_DASHBOARD_SECRET`, `_SESSION_HOURS`, `_POLL_SECONDS`."""

    model_config = SettingsConfigDict(env_prefix="METERING_DASHBOARD_", extra="ignore")

    # Signs session cookies. Unset: a secret kept in `<METERING_DATA_DIR>/dashboard-secret`,
    # shared by every process on the machine. Set it when API processes run on several
    # machines, or sessions made on one are refused by the others.
    secret: str | None = None
    session_hours: float = 12.0  # float-ok
    poll_seconds: float = 5.0  # float-ok


@lru_cache(maxsize=1)
def get_dashboard_settings() -> DashboardSettings:
    return DashboardSettings()
