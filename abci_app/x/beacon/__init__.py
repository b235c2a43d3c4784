"""The selection beacon: randomness from the validators' vote extensions that no proposer can steer alone."""
