"""Seeded synthetic chest-CT phantoms with labelled lesions, for tests, benchmarks and the demo.

A phantom is an axial stack in HU: padding outside a circular scan field
(-2048, like LIDC), air, an elliptic body of soft tissue, two lungs, a spine,
and spherical lesions inside the lungs. Lesion classes differ in a way a 3D
CNN can learn but a single voxel cannot show:

- class 0 ("benign"): small, smooth, solid sphere;
- class 1 ("malignant"): larger, lobulated and spiculated solid mass;
- class 2 ("ground-glass"): faint (-450 HU) sphere with a solid core.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

CLASS_NAMES = ("benign", "malignant", "ground-glass")
PADDING_HU = -2048


@dataclasses.dataclass(frozen=True)
class Lesion:
    """One lesion: centre in voxels (z, y, x), radius in mm, class index."""

    centre_zyx: tuple[int, int, int]
    radius_mm: float
    cls: int


@dataclasses.dataclass(frozen=True)
class Phantom:
    """A phantom volume (Z, Y, X) int16 in HU, its spacing in mm and its lesions."""

    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    lesions: tuple[Lesion, ...]


def _ellipsoid(shape, centre, radii):
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2) <= 1.0


def _lesion_mask(shape, centre, radius_vox, cls, rng):
    """Boolean mask of one lesion; spikes and lobes for class 1."""
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    dz, dy, dx = (zz - centre[0]) / radius_vox[0], (yy - centre[1]) / radius_vox[1], (xx - centre[2]) / radius_vox[2]
    r = np.sqrt(dz ** 2 + dy ** 2 + dx ** 2)
    if cls != 1:
        return r <= 1.0
    # Lobulated surface: the radius varies with direction; plus a few thin spikes.
    theta = np.arctan2(dy, dx)
    phi = np.arctan2(dz, np.sqrt(dx ** 2 + dy ** 2) + 1e-9)
    a, b = rng.uniform(0, 2 * np.pi, 2)
    surface = 1.0 + 0.25 * np.sin(3 * theta + a) * np.cos(2 * phi + b)
    mask = r <= surface
    for _ in range(6):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        # distance from the spike's axis, within 1.9 radii of the centre
        t = dz * v[0] + dy * v[1] + dx * v[2]
        perp = np.sqrt(np.maximum(r ** 2 - t ** 2, 0))
        mask |= (t > 0) & (t < 1.9) & (perp < 0.18)
    return mask


def make_phantom(shape: tuple[int, int, int] = (48, 96, 96),
                 spacing_zyx: tuple[float, float, float] = (2.5, 1.4, 1.4),
                 n_lesions: int = 4, classes: tuple[int, ...] = (0, 1),
                 seed: int = 0, noise_hu: float = 20.0) -> Phantom:
    """Generate one seeded chest phantom.

    Parameters
    ----------
    shape
        Volume size (Z, Y, X) in voxels; each axis at least 16.
    spacing_zyx
        Voxel size in mm.
    n_lesions
        Lesions placed inside the lungs, at least 1 voxel apart.
    classes
        Class indices to draw lesions from (see module docstring).
    seed
        Seed of every random choice: same seed, same phantom.
    noise_hu
        Standard deviation of Gaussian noise in HU.

    Returns
    -------
    Phantom
        ``hu`` (Z, Y, X) int16; lesions with centres in voxels.
    """
    if min(shape) < 16:
        raise ValueError(f"shape must be at least 16 voxels per axis, got {shape}")
    if any(c not in range(len(CLASS_NAMES)) for c in classes) or not classes:
        raise ValueError(f"classes must be a non-empty subset of 0..{len(CLASS_NAMES) - 1}, got {classes}")
    rng = np.random.default_rng(seed)
    Z, Y, X = shape
    sz, sy, sx = spacing_zyx
    vol = np.full(shape, -1000.0, dtype=np.float32)
    cy, cx = Y / 2, X / 2
    body = _ellipsoid(shape, (Z / 2, cy, cx), (Z * 10, Y * 0.36, X * 0.45))
    vol[body] = 40.0
    lung_r = (Z * 0.42, Y * 0.24, X * 0.17)
    lungs = []
    for side in (-1, 1):
        c = (Z / 2, cy - Y * 0.02, cx + side * X * 0.21)
        m = _ellipsoid(shape, c, lung_r)
        vol[m] = -850.0
        lungs.append((c, m))
    spine = _ellipsoid(shape, (Z / 2, cy + Y * 0.25, cx), (Z * 10, Y * 0.06, X * 0.05))
    vol[spine] = 700.0

    lesions = []
    for _ in range(n_lesions):
        cls = int(rng.choice(classes))
        radius_mm = float({0: rng.uniform(3.0, 4.5), 1: rng.uniform(5.5, 7.5),
                           2: rng.uniform(5.0, 7.0)}[cls])
        rv = (radius_mm / sz, radius_mm / sy, radius_mm / sx)
        (lc, lmask) = lungs[int(rng.integers(2))]
        inner = np.argwhere(lmask & _inner_margin(shape, lc, lung_r, rv))
        if len(inner) == 0:
            raise ValueError(f"lungs of a {shape} phantom are too small for lesions of {radius_mm:.1f} mm")
        centre = tuple(int(v) for v in inner[rng.integers(len(inner))])
        m = _lesion_mask(shape, centre, rv, cls, rng)
        if cls == 2:
            vol[m] = -450.0
            vol[_lesion_mask(shape, centre, tuple(r * 0.35 for r in rv), 0, rng)] = 30.0
        else:
            vol[m] = 45.0
        lesions.append(Lesion(centre, radius_mm, cls))

    vol += rng.normal(0.0, noise_hu, size=shape).astype(np.float32)
    fov = ((np.arange(Y)[:, None] - cy) ** 2 + (np.arange(X)[None, :] - cx) ** 2) > (min(Y, X) * 0.5) ** 2
    vol[:, fov] = PADDING_HU
    return Phantom(np.round(vol).astype(np.int16), tuple(float(s) for s in spacing_zyx), tuple(lesions))


def _inner_margin(shape, centre, radii, margin):
    """Points at least ``margin`` voxels inside an ellipsoid (shrunk radii)."""
    shrunk = tuple(max(r - m * 1.5, 0.5) for r, m in zip(radii, margin))
    return _ellipsoid(shape, centre, shrunk)


def write_nifti(path: str | Path, hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    """Save a (Z, Y, X) volume as NIfTI: array axes (i, j, k) = (x, y, z), affine diag(spacing)."""
    import nibabel as nib

    affine = np.diag([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine), str(path))


def write_archive(out_dir: str | Path, n_cases: int = 8, seed: int = 0, **phantom_kw) -> Path:
    """Write ``n_cases`` phantoms as NIfTI files plus ``lesions.csv`` (case, z, y, x, label).

    Returns the path of ``lesions.csv``; its centres are voxels of the stored volume.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_cases):
        ph = make_phantom(seed=seed * 100_003 + i, **phantom_kw)
        case = f"phantom-{i:03d}"
        write_nifti(out / f"{case}.nii.gz", ph.hu, ph.spacing_zyx)
        rows += [(case, *les.centre_zyx, les.cls) for les in ph.lesions]
    labels = out / "lesions.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "z", "y", "x", "label"])
        w.writerows(rows)
    return labels
