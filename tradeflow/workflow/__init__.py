"""Public paths of the seed's executors; the engine lives in :mod:`tradeflow.engine`."""
