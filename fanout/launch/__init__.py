"""The launcher: what runs a layout's tiers (``fanout serve``, ``edge``, ``procfile``,
``fit``). It imports the core only, never a tier or a tool."""
