"""Using a trained model: load it, chat with it, evaluate it on conversation suites.

Shared by the `chat`, `evaluate` and `serve` entry points. Prompts are rendered with the
training template (data/template.py), so the model sees at inference what it saw in training.
"""

__all__ = ["ChatModel", "answer"]


def __getattr__(name: str):
    # Lazy: the entry points import submodules of this package without paying for torch here.
    if name in __all__:
        from dsvl_exp.inference import api

        return getattr(api, name)
    raise AttributeError(name)
