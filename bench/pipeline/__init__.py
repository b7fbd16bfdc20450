"""Pipeline benchmark: each Spark stage at growing lake sizes against its physical floor (README.md)."""
