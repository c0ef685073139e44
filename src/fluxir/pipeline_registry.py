"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The default run (`kedro run`): build the dataset, train the adapter, evaluate it. `restore` works on a
# user's own photos (restore.input_dir), so it runs only when asked for by name.
DEFAULT = ("fluxgen", "train", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Register every pipeline under ``fluxir.pipelines``; ``__default__`` chains fluxgen -> train -> evaluate."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT if name in pipelines), Pipeline([]))
    return pipelines
