"""llmnetd: the node process around the state machine."""
