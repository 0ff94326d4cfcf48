"""The team dashboard: server-rendered pages for a person, signed in with one API key.

A team key sees its team's credit, usage, running sandboxes, executions, sandbox metrics and
invoices; a finance key also sees the month's invoices, revenue by plan and the teams running
out of credit. Pages are Jinja2 templates filled from the same read functions the JSON API
uses, called in-process; live figures refresh by polling a small JSON endpoint.
"""
