"""Generated google.api annotations that the parking protos import."""
