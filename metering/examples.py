"""An example batch of events, as the orchestrator would post it: one sandbox's life.

`metering events example` prints it for the README's first steps and for anyone writing an
orchestrator adapter: the times are recent (so the batch is accepted today) and the usage it
bills is known exactly: 10 minutes at 2 vCPU and 1024 MiB are 1,200 vCPU-seconds and 600
GiB-seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from metering.core.clock import rfc3339

RUN = timedelta(minutes=10)
SAMPLE_EVERY = timedelta(minutes=1)
VCPU = 2
MEMORY_MIB = 1024


def example_batch(now: datetime, team_id: str = "team_8c1", sandbox_id: str = "sbx_3f9a",
                  source: str = "orchestrator/eu-1/node-17") -> list[dict[str, Any]]:
    """A created event, a `host_stats` sample a minute, and a killed event; the sandbox ended
    a minute before `now`. Ids derive from the sandbox and times, so posting the same batch
    twice answers duplicates, not new usage."""
    end = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    start = end - RUN
    execution = f"exe_{sandbox_id.removeprefix('sbx_')}_{start:%H%M}"

    def event(kind: str, at: datetime, **data: Any) -> dict[str, Any]:
        return {
            "specversion": "1.0", "id": f"{execution}-{kind}-{at:%H%M%S}", "source": source,
            "type": "sandbox.host_stats" if kind == "host_stats" else f"sandbox.lifecycle.{kind}",
            "subject": sandbox_id, "time": rfc3339(at),
            "data": {"team_id": team_id, "execution_id": execution, **data},
        }

    batch = [event("created", start, template_id="base", vcpu=VCPU, memory_mib=MEMORY_MIB)]
    at = start + SAMPLE_EVERY
    minute = 0
    while at < end:
        batch.append(event("host_stats", at, cpu_pct=35 + 5 * (minute % 4),
                           memory_used_mib=400 + 20 * minute))
        at += SAMPLE_EVERY
        minute += 1
    batch.append(event("killed", end, reason="request"))
    return batch
