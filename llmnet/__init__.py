"""LLM-Net processes and SDK around the state machine: the node (llmnetd) and the client (llmnet)."""
