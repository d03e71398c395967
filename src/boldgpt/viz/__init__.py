"""Figures. Models never draw; everything visual lives in this package.

``maps`` holds the shared helpers for drawing flat maps; the other modules draw the
figures of one part each (data, simulator, training, reports).
"""
