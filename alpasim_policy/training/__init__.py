"""Training data and pipelines: chain-of-causation auto-labels (more stages to come)."""
