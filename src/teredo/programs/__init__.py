"""The programs: the daemons, the probe and the one-shot commands, built from the core and the
adapters (see docs/architecture.md)."""
