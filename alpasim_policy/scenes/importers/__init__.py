"""scenes/importers stage."""
