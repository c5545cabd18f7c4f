"""Runs as reviewable objects: manifests, run-to-run comparison, sweep reports."""
