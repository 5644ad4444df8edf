"""Parquet feedback store (predicted vs. actual)."""
from prae.store.feedback import FORECAST_SCHEMA, TELEMETRY_SCHEMA, FeedbackStore

__all__ = ["FeedbackStore", "FORECAST_SCHEMA", "TELEMETRY_SCHEMA"]
