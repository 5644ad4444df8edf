"""Pure decision layer: forecasts -> prioritised resource requests. No Ray import."""
