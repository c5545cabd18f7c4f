"""dsvl_exp: Hydra-configured experiments for DeepSpeed-VisualChat-style multimodal chat models."""

__version__ = "0.1.0"

__all__ = ["DSVLModel", "__version__"]


def __getattr__(name: str):
    # Lazy so that `python -m dsvl_exp.train --help` does not pay for torch/transformers twice.
    if name == "DSVLModel":
        from dsvl_exp.models.dsvl import DSVLModel

        return DSVLModel
    raise AttributeError(name)
