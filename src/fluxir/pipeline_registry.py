"""Project pipelines."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from fluxir.pipelines.export import create_adapter_pipeline

# The default run (`kedro run`): build the dataset, train the adapter, evaluate it. `restore` works on a
# user's own photos (restore.input_dir), so it runs only when asked for by name.
DEFAULT = ("fluxgen", "train", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    """Every pipeline under ``fluxir.pipelines`` (and ``export_adapter``, the second pipeline of ``export``) as a
    modular pipeline named after it; ``__default__`` chains fluxgen -> train -> evaluate.

    The namespace groups each pipeline's nodes (kedro-viz draws one collapsible box per pipeline, and
    node names read ``fluxgen.generate_images``); ``prefix_datasets_with_namespace=False`` keeps every
    dataset and parameter name as the catalog and the ``parameters_*.yml`` files spell it.
    """
    found = {**find_pipelines(raise_errors=True), "export_adapter": create_adapter_pipeline()}
    pipelines = {
        name: Pipeline(pipeline, namespace=name, prefix_datasets_with_namespace=False)
        for name, pipeline in found.items()
        if name != "__default__"
    }
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT if name in pipelines), Pipeline([]))
    return pipelines
