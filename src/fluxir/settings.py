"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from kedro.config import OmegaConfigLoader

from fluxir.parameters.config import CONFIG_LOADER_ARGS  # noqa: F401 (read by Kedro)
from fluxir.runtime.hooks import LaunchContextHook, MlflowDatasetsHook, MlflowRunHook, ParameterCheckHook

CONFIG_LOADER_CLASS = OmegaConfigLoader
HOOKS = (ParameterCheckHook(), MlflowRunHook(), MlflowDatasetsHook(), LaunchContextHook())
