"""Every table of the service, gathered for Alembic: importing this registers all models."""

from __future__ import annotations

from billing.accounts import models as _accounts  # noqa: F401
from billing.credits import models as _credits  # noqa: F401
from billing.dashboard import models as _dashboard  # noqa: F401
from billing.invoices import models as _invoices  # noqa: F401
from billing.plans import models as _plans  # noqa: F401
from billing.stripe_sync import models as _stripe  # noqa: F401
from billing.verification import models as _verification  # noqa: F401
from metering.admissions import models as _admissions  # noqa: F401
from metering.auth import models as _auth  # noqa: F401
from metering.db import Base
from metering.enforcement import models as _enforcement  # noqa: F401
from metering.executions import models as _executions  # noqa: F401
from metering.ingest import models as _ingest  # noqa: F401
from metering.teams import models as _teams  # noqa: F401

metadata = Base.metadata
