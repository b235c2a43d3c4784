"""LLM-Net experts: a base model with LoRA adapters, served over gRPC."""
