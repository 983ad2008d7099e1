"""The job file: its schema and `--set` overrides, `${VAR}` expansion, dated paths, sweeps."""
