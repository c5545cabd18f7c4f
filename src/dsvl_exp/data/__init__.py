"""Data: conversation formats, the DeepSpeed-VisualChat template, datasets, collation, synthetic data."""
