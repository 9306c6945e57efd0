"""The coord check (microsoft/mup's): activation sizes per layer and step across model widths."""
