"""Retention of per-minute samples: which months may go (billing decides: closed and invoiced)."""
