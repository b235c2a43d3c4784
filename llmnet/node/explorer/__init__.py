"""The read-only web explorer that `llmnetd start` serves next to its gRPC API."""
