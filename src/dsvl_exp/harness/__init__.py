"""Adapters for the evaluation harnesses the field uses (lmms-eval); each imports its harness
only when the harness loads it."""
