"""The teredo lab: a small Teredo Internet in network namespaces (see DESIGN.md)."""
