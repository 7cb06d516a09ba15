"""One module per command: parse flags, make one call into the core, render. No torch at import."""
