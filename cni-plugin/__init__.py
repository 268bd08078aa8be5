"""The podnet CNI plugin (installed as the `podnet` binary)."""
