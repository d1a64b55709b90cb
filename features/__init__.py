"""Feature builders: the red flags of real diversion cases as polars expressions."""
