"""The Zarr volume store: commits, the array encoder, OME-Zarr metadata, malloc settings for writers."""
