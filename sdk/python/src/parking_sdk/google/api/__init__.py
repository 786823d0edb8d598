"""Generated from proto/google/api (HTTP annotations)."""
