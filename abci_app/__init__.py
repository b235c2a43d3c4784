"""LLM-Net's deterministic ABCI application."""

APP_VERSION = 3
"""Protocol version reported in Info; bumps when state-transition rules change (2: every store commits its
sorted key links, every message emits a `message` event, an empty tx is tx/2; 3: x/validators, the validator
set follows bonds)."""

SOFTWARE_VERSION = "0.1.0"
