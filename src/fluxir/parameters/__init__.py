"""The run's parameters: parsing (config), the rule tables (rules) and the checks before a run (validation)."""
