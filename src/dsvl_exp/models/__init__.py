"""Models: vision encoders, projections, the LLaMA decoder and the composed DSVLModel."""
