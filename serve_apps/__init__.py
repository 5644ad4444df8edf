"""Ray Serve applications of PRAE."""
