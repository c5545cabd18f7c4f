"""Using a trained model: load it, chat with it, evaluate it on conversation suites.

Shared by the `chat`, `evaluate` and `serve` entry points. Prompts are rendered with the
training template (data/template.py), so the model sees at inference what it saw in training.
"""
