"""The contract version (proto/VERSION), written by scripts/gen-sdk-python.sh."""

__version__ = "1.1.0"
