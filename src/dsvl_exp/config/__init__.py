"""Typed config schemas (registered in Hydra's ConfigStore) and command-line helpers."""
