"""The llmnet client: keys, transactions, queries (CLI and importable SDK)."""
