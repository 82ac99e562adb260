"""Calibration: data -> token batches, observer -> per-expert statistics."""
