"""Pure numpy/OpenCV pre- and post-processing; nothing here knows a runtime."""
