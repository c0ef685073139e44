"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Environments (tiny, local) override single keys of a parameter group, not the whole group.
    "merge_strategy": {"parameters": "soft"},
}

from fluxir.hooks import MlflowRunHook, ReportingArtifactsHook  # noqa: E402

HOOKS = (MlflowRunHook(), ReportingArtifactsHook())
