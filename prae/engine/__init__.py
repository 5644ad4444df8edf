"""Engine: the run loop and the thin Ray actors around the plain classes."""
