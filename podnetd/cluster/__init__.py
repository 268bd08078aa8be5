"""Cluster membership (stores) and routing between nodes (backends); see docs/architecture.md."""
