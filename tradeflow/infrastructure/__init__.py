"""Public import paths of the seed's API (``factory``, ``emergency``); the code lives in
:mod:`tradeflow.app` and :mod:`tradeflow.domain`."""
