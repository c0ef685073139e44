"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from fluxir.pipelines.export import create_adapter_pipeline

# The default run (`kedro run`): build the dataset, train the adapter, evaluate it. `restore` works on a
# user's own photos (restore.input_dir), so it runs only when asked for by name.
DEFAULT = ("fluxgen", "train", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline under ``fluxir.pipelines`` (and ``export_adapter``) namespaced by its name, so kedro-viz draws
    one box per pipeline and nodes read ``fluxgen.generate_images``; dataset and parameter names stay unprefixed."""
    found = {**find_pipelines(raise_errors=True), "export_adapter": create_adapter_pipeline()}
    pipelines = {
        name: Pipeline(pipeline, namespace=name, prefix_datasets_with_namespace=False)
        for name, pipeline in found.items()
        if name != "__default__"
    }
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT if name in pipelines), Pipeline([]))
    return pipelines
