"""Metering runs only with billing installed: no silent default prices or limits."""

from __future__ import annotations

import pytest

from metering import plugins


def test_metering_refuses_to_price_or_limit_without_billing_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plugins, "_billing", None)
    with pytest.raises(plugins.BillingNotInstalled, match="install"):
        plugins.billing()
