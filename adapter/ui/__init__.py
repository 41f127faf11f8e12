"""The dashboard at ``/ui``: server-rendered pages (Jinja2, no front-end build) for study
coordinators (outcomes), integration engineers (ingestions and their row issues) and operators
(subscriptions). Same authorization as the API (adapter/auth/policy.py)."""
