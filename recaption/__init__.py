"""recaption."""
