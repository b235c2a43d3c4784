"""Balances of the native denom, transfers and total supply."""
