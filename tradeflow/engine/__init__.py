"""The engine: definitions (parse, validate), plan, runner, journal, nodes, resilience.

It sees only the ports (:mod:`tradeflow.ports`) and the domain."""
