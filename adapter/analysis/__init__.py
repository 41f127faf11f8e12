"""Analysis plans: a study's figures declared as data over the SQL on FHIR views (plan.py)."""
