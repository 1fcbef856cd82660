"""tradeflow: a workflow executor for trading bots."""

__version__ = "0.1.0"
__all__ = ["__version__"]
