"""② Complete: the quiet-period job that closes a series, and the routing rules that decide what to denoise."""
