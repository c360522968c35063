"""Tiny synthetic DICOM CT series for tests: known geometry, known HU (a linear field of world position)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# HU = field(world x, y, z) in mm: linear, so linear interpolation reproduces it exactly
FIELD = np.array([4.0, -2.0, 6.0])  # per mm of x, y, z: even, so integer positions give exact HU at slope 2
FIELD_C = 100.0


def field_hu(world_xyz) -> np.ndarray:
    return np.asarray(world_xyz, float) @ FIELD + FIELD_C


def write_series(folder, positions_xyz, *, rows=12, cols=10, pixel=(1.0, 2.0),
                 iop=(1, 0, 0, 0, 1, 0), series_uid=None, modality="CT", sop_class=CTImageStorage,
                 slope=2.0, intercept=-1024.0, names=None, instance_numbers=None, values=None,
                 patient_id="P1"):
    """Write one series: slice k at ``positions_xyz[k]``; HU from :func:`field_hu` unless ``values``.

    ``pixel`` is (row spacing, column spacing) in mm. Returns the file paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    u, v = np.array(iop[:3], float), np.array(iop[3:], float)
    rr, cc = np.mgrid[:rows, :cols]
    paths = []
    for k, pos in enumerate(positions_xyz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = names[k] if names else f"slice{k:03d}.dcm"
        path = folder / name
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.PatientID = modality, series_uid, patient_id
        ds.InstanceNumber = instance_numbers[k] if instance_numbers else k + 1
        ds.ImagePositionPatient = [float(x) for x in pos]
        ds.ImageOrientationPatient = [float(x) for x in iop]
        ds.PixelSpacing = [float(pixel[0]), float(pixel[1])]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if values is None:
            world = (np.asarray(pos, float)[None, None, :] + rr[..., None] * pixel[0] * v
                     + cc[..., None] * pixel[1] * u)
            hu = field_hu(world)
        else:
            hu = values[k]
        stored = np.round((hu - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths


def z_positions(zs, x=-10.0, y=20.0):
    return [(x, y, float(z)) for z in zs]
