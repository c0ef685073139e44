"""What a run does around its stages: processes and launch, progress, MLflow tracking, notices and the Kedro hooks."""
