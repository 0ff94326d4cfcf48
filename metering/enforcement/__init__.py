"""Enforcement: kill orders (feed and signed webhook), threshold notifications, the outbox."""
