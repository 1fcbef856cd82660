"""Adapters by technology, each implementing ports of :mod:`tradeflow.ports`; none imports another."""
