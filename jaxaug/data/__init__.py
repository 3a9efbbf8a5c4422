"""Input pipelines: sources (npz, image folders, tfds, sklearn digits) and stateless batching."""

from jaxaug.data.pipeline import Pipeline, pipeline_from_config, prefetch
from jaxaug.data.sources import (
    ArraySource,
    Dataset,
    FolderSource,
    LOADERS,
    Source,
    TfdsSource,
    UnreadableImageError,
    default_data_config,
    load_dataset,
)

__all__ = [
    "ArraySource",
    "Dataset",
    "FolderSource",
    "LOADERS",
    "Pipeline",
    "Source",
    "TfdsSource",
    "UnreadableImageError",
    "default_data_config",
    "load_dataset",
    "pipeline_from_config",
    "prefetch",
]
