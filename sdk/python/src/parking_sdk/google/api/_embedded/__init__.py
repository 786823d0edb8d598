"""Generated from proto/google/api; used when googleapis-common-protos is absent."""
