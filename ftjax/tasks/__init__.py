"""Tasks: what a backbone's outputs become (features, head, loss, predictions, metrics)."""
