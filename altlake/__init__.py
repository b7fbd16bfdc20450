"""altlake contracts: table schemas, settings and lake paths shared by every runtime.

This package imports nothing else of the project, so Spark executors, GPU worker containers and
Airflow schedulers can all depend on it.
"""
