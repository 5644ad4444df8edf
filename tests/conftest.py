"""Shared test settings."""

import os

# Shadows of built-in kinds are forked from a per-node fork server that stays up for later
# shadows; in tests it exits 20 s after its last shadow, so none outlives the session long.
os.environ.setdefault("PRAE_FORKSERVER_IDLE_S", "20")
