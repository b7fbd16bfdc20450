"""The `altlake` command line: thin argument parsing that hands off to the jobs and the worker."""
