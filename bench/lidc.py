"""Read a LIDC DICOM series into HU for benchmarks (not a second ingest: no normalisation, no store)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def read_series(series_dir: str | Path) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """(Z, Y, X) float32 HU sorted by ImagePositionPatient z ascending, spacing_zyx and origin_zyx (mm)."""
    import pydicom

    files = [p for p in Path(series_dir).rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", "")]
    slices = []
    for p in files:
        try:
            ds = pydicom.dcmread(p)
        except Exception:  # noqa: BLE001 - non-DICOM files (XML annotations) are skipped
            continue
        if "PixelData" in ds and "ImagePositionPatient" in ds:
            slices.append(ds)
    if not slices:
        raise FileNotFoundError(f"no DICOM slices under {series_dir}")
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
                   for d in slices])
    zs = [float(d.ImagePositionPatient[2]) for d in slices]
    dz = float(np.median(np.diff(zs))) if len(zs) > 1 else float(slices[0].SliceThickness)
    py, px = (float(v) for v in slices[0].PixelSpacing)
    ipp = [float(v) for v in slices[0].ImagePositionPatient]
    return hu, (dz, py, px), (ipp[2], ipp[1], ipp[0])
