"""field-agent-broker: session broker for field-agent fleets (see broker/README.md)."""

__version__ = "0.1.0"
