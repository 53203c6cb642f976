"""cocoon: Confidential Compute Open Network."""

__version__ = "0.1.0"
