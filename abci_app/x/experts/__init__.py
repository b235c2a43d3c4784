"""Expert registry: bonds, domains, model commitments, reputation, jail and slashing."""
