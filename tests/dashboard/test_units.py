"""The dashboard's pure parts: session cookie signing and display formatting (no database)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from billing.dashboard import cookies
from billing.dashboard import formatting as fmt
from billing.dashboard.service import RANGES, chart_range

SECRET = b"s" * 64
DIGEST = "ab" * 32


def test_a_signed_cookie_verifies_only_unchanged_unexpired_and_for_its_key() -> None:
    value = cookies.sign(SECRET, "key_1", DIGEST, 2_000)
    claim = cookies.parse(value)
    assert claim is not None and claim.key_id == "key_1" and claim.expires_at == 2_000
    assert cookies.verify(SECRET, claim, DIGEST, 1_999)
    assert not cookies.verify(SECRET, claim, DIGEST, 2_000)  # expired
    assert not cookies.verify(SECRET, claim, "cd" * 32, 1_000)  # another key's digest
    assert not cookies.verify(b"t" * 64, claim, DIGEST, 1_000)  # another server secret
    forged = cookies.parse(value.replace("key_1", "key_2"))
    assert forged is not None and not cookies.verify(SECRET, forged, DIGEST, 1_000)


@pytest.mark.parametrize("value", [None, "", "v1.a.b", "v2.key.10.mac", "v1.key.ten.mac",
                                   "v1.key.10.mac.extra", "x" * 300])
def test_malformed_cookies_are_no_claim(value: str | None) -> None:
    assert cookies.parse(value) is None


def test_the_secret_is_configured_or_kept_once_in_the_data_dir(tmp_path: Path) -> None:
    assert cookies.load_secret("configured", tmp_path) == b"configured"
    first = cookies.load_secret(None, tmp_path / "data")
    assert len(first) == 64
    assert cookies.load_secret(None, tmp_path / "data") == first  # shared, survives restarts
    assert sorted(os.listdir(tmp_path / "data")) == [cookies.SECRET_FILE]  # no temp files left


def test_an_unwritable_data_dir_gives_a_process_secret(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    secret = cookies.load_secret(None, blocker / "data")
    assert len(secret) == 32


@pytest.mark.parametrize(("value", "kwargs", "shown"), [
    ("151.37", {}, "$151.37"),
    ("1234567.5", {}, "$1,234,567.50"),
    ("0", {}, "$0.00"),
    ("-30.95", {}, "-$30.95"),
    ("0.019579105", {"fine": True}, "$0.0196"),
    ("0.00005", {"fine": True}, "$0.0001"),  # half-up, as bills round
    ("12.345", {"fine": True}, "$12.35"),
    ("100", {"currency": "eur"}, "€100.00"),
    ("100", {"currency": "jpy"}, "100 JPY"),
    ("", {}, "$0.00"),
])
def test_money(value: str, kwargs: dict[str, object], shown: str) -> None:
    assert fmt.money(value, **kwargs) == shown  # type: ignore[arg-type]


def test_quantities_durations_sizes_and_times() -> None:
    assert fmt.quantity("4160.024") == "4,160"
    assert fmt.quantity("602.434") == "602.4"
    assert fmt.quantity("1.005") == "1.01"
    assert fmt.quantity("0") == "0"
    assert fmt.exact("97857.1428570000000") == "97,857.142857"
    assert fmt.exact(Decimal("-1.50")) == "-1.5"
    assert fmt.exact("0.0000045") == "0.0000045"
    assert fmt.duration(45) == "45 s"
    assert fmt.duration(300) == "5 min"
    assert fmt.duration(3600) == "1 h"
    assert fmt.duration(3 * 86400 + 7200) == "3 d 2 h"
    assert fmt.memory(512) == "512 MiB" and fmt.memory(2048) == "2 GiB"
    assert fmt.memory(1536) == "1.5 GiB"
    assert fmt.when("2026-11-03T10:15:02.125Z") == "2026-11-03 10:15 UTC"
    assert fmt.when(None) == "—"
    assert fmt.bucket_label("2026-11-03T14:00:00.000Z", "hour") == "14:00"
    assert fmt.bucket_label("2026-11-03T00:00:00.000Z", "day") == "Nov 3"


def test_chart_ranges_start_on_whole_buckets() -> None:
    now = datetime(2026, 11, 26, 16, 25, 21, tzinfo=UTC)
    assert RANGES["24h"].start(now) == datetime(2026, 11, 25, 17, tzinfo=UTC)
    assert RANGES["7d"].start(now) == datetime(2026, 11, 20, tzinfo=UTC)
    assert RANGES["month"].start(now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert chart_range("nonsense").code == "24h"
