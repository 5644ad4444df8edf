"""PRAE — the Predictive Resource Allocation Engine.

Layers, from the outside in (each a package; the folder names are the architecture):

- ``config``      parses YAML once into frozen, typed objects (``prae.config``).
- ``telemetry``   reads the world: process-tree samplers for live and shadow workloads.
- ``workloads``   the user's jobs and the built-in ones, plus their shadows.
- ``model``       plain torch: the quantile LSTM, features, calibration, the predictor
                  that Serve and the backtest share. No Ray import.
- ``policy``      pure decisions: forecasts -> prioritised resource requests.
- ``engine``      thin Ray actors and the run loop that wires the layers together.
- ``store``       the Parquet feedback store (predicted vs. actual).
"""

__version__ = "0.1.0"
