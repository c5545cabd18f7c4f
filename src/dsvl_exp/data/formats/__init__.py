"""Readers that turn a data format on disk into `Conversation`s. One module per format."""
