"""Readers that turn a data format on disk into `Conversation`s, one module per format or
reference dataset family, each registered by name in `registry.READERS`."""

from dsvl_exp.data.formats import (  # noqa: F401  (importing registers the readers)
    blend,
    coco,
    llava,
    llava_json,
    mimicit,
    native,
    ocr_vqa,
    sparkles,
)
from dsvl_exp.data.formats.registry import READERS, LoadedDataset, get_reader  # noqa: F401
