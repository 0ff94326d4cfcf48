"""Every table of the service, gathered for Alembic: importing this registers all models."""

from __future__ import annotations

from metering.auth import models as _auth  # noqa: F401
from metering.db import Base
from metering.executions import models as _executions  # noqa: F401
from metering.ingest import models as _ingest  # noqa: F401
from metering.teams import models as _teams  # noqa: F401

metadata = Base.metadata
