"""LLM-Net's deterministic ABCI application."""

APP_VERSION = 1
"""Protocol version reported in Info; bumps when state-transition rules change."""

SOFTWARE_VERSION = "0.1.0"
