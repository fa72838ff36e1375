"""biocredit: a reproducible benchmark of biologically plausible credit-assignment rules."""

__version__ = "0.1.0"
