"""The `llmp` command: what an operator runs by hand."""
