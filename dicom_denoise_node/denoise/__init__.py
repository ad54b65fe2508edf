"""③ Denoise: decode → tiled inference → derived instances → consistency guard → quality report (SR)."""
