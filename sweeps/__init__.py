"""Sweep studies on Ray Tune."""
