"""`plan`: will a config fit on a GPU, and how long will it take? Everything here works from the
composed config and the model's architecture on the meta device (no weights are read)."""
