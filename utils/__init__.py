"""Library behind the three command-line stages; one module per concern."""
