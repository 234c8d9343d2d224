"""alignkit: squeezing-aware preference training (extended SFT -> DPO/IPO) with probes of the learning dynamics."""

__version__ = "0.1.0"
