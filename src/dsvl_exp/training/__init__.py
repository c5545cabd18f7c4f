"""Training: DeepSpeed engine set-up, the loop, evaluation, logging."""
