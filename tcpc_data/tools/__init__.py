"""Tools over any tcpc output: inspect (summary and montage), verify (integrity), view (napari)."""
