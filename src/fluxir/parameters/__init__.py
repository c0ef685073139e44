"""The run's parameters: loading and checking them (config) and the checks before a run (validation)."""
