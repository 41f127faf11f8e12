"""Authentication and authorization: SMART Backend Services clients and tokens (tokens.py), roles
and scopes (policy.py), client registration checks (clients.py), and the audit record (audit.py)."""
