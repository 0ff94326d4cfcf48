"""Stripe: customers per team, invoice sync with deterministic idempotency keys, the signed
webhook inbox, and dunning. `gateway` is the only module of the project that imports `stripe`.
"""
