"""Slide IO: open real slides, physical resolution, tissue, tiling grids, zarr stores, pyramidal TIFF writing.

This package never imports torch.
"""
