"""Accounts, sequences, signatures and fees."""
