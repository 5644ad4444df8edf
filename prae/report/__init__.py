"""The run report: one self-contained HTML page (inline SVG charts, no scripts, no network)."""
