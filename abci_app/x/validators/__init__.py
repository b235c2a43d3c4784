"""Validators: who runs consensus, by bond; liveness and double-sign slashing; the set CometBFT is told."""
