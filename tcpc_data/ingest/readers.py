"""Readers of single-file volume formats: NIfTI, MetaImage (.mhd + .raw / .mha), NRRD, NumPy.

Each reader checks the header (dimensions, size limit) before loading voxels
and returns a :class:`~tcpc_data.volume.Volume` in HU on axes (z, y, x) with
LPS geometry. File axes: NIfTI, MetaImage and NRRD store x fastest, so their
(i, j, k) become (z, y, x) = (k, j, i) without flipping; NumPy arrays are
taken as (z, y, x) with the spacing given by the caller.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from tcpc_data.volume import Volume, check_size, one_line, orthonormal_direction, reader

# RAS -> LPS: negate world x and y (in z/y/x component order: y and x)
_RAS_TO_LPS = np.array([1.0, -1.0, -1.0])


def _geometry_from_xyz(axes_xyz: np.ndarray, origin_xyz: np.ndarray, flip_zyx: np.ndarray, case: str):
    """(spacing_zyx, origin_zyx, direction) from per-axis world vectors given in x/y/z order.

    ``axes_xyz[i]`` is the world step (mm, x/y/z components) of file axis i (x, y, z).
    """
    steps_zyx = np.asarray(axes_xyz, float)[::-1, ::-1] * flip_zyx  # rows z, y, x; components z, y, x
    spacing = np.linalg.norm(steps_zyx, axis=1)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"{case}: voxel spacing must be positive, got {spacing[::-1].tolist()} (x, y, z)")
    direction = orthonormal_direction(steps_zyx / spacing[:, None], case)
    origin = np.asarray(origin_xyz, float)[::-1] * flip_zyx
    return tuple(float(s) for s in spacing), tuple(float(v) for v in origin), direction


@reader
def read_nifti(path: str | Path, *, max_voxels: int, case: str) -> Volume:
    """Read a NIfTI-1/2 file (``.nii``, ``.nii.gz``); scaling (scl_slope/inter) is applied."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt headers
        raise ValueError(f"{case}: cannot read NIfTI {path}: {one_line(exc)}") from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{case}: NIfTI {path} has shape {img.shape}; expected a 3-D volume")
    check_size(shape[::-1], max_voxels, case)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:  # truncated gzip / short file
        raise ValueError(f"{case}: cannot read the voxels of NIfTI {path}: {one_line(exc)}") from exc
    _check_nifti_pixdim(img, path, case)
    affine = img.affine
    spacing, origin, direction = _geometry_from_xyz(affine[:3, :3].T, affine[:3, 3], _RAS_TO_LPS, case)
    # NIfTI holds float32: record the decimal it was written from (1.4, not 1.399999976)
    spacing, origin = (tuple(float(str(np.float32(v))) for v in t) for t in (spacing, origin))
    return Volume(np.ascontiguousarray(data.transpose(2, 1, 0)), spacing, origin, direction)


def _check_nifti_pixdim(img, path, case: str) -> None:
    """Refuse a NIfTI whose geometry rests on a zero, negative or non-finite voxel size.

    nibabel replaces such pixdims by 1 on load (with a log line only), which would
    ingest the volume at a made-up 1 mm; the raw header is re-read to see them. The
    sform, when set, carries its own voxel size and is checked by the geometry code.
    """
    from nibabel.openers import ImageOpener

    if int(img.header["sform_code"]) > 0:
        return
    with ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise ValueError(f"{case}: NIfTI {path} declares voxel size {pixdim.tolist()} mm (pixdim, x/y/z) "
                         f"and no sform: the spacing is unknown")


def contained_data_file(header_path: str | Path, name: str, case: str) -> Path:
    """The data file ``name`` that a header at ``header_path`` points to, kept inside the header's folder.

    A header is data, so what it names must not reach outside the tree it was
    found in: absolute names and ``..`` components are refused. The check is on
    the name, not the resolved path, so links the user placed are still followed.
    """
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or not parts:
        raise ValueError(f"{case}: {Path(header_path).name} names data file {name!r} outside its folder; "
                         f"only files beside or below the header are read")
    return Path(header_path).parent / name


def _inflate(payload: bytes, limit: int, path, case: str) -> bytes:
    """zlib-decompress at most ``limit`` bytes: data that expand past their declared size are cut off."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, limit)
    except zlib.error as exc:
        raise ValueError(f"{case}: compressed MetaImage data of {path} are corrupt: {one_line(exc)}") from exc
    return out


_MET_TYPES = {"MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
              "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
              "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def read_mhd_header(path: str | Path, text: str | None = None) -> dict[str, str]:
    """Parse a MetaImage header into key -> value text (stops at ``ElementDataFile``)."""
    if text is None:
        with open(path, "rb") as f:
            text = f.read(64 * 1024).decode("latin-1")
    header: dict[str, str] = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        header[key] = value
        if key == "ElementDataFile":
            break
    if "ElementDataFile" not in header:
        raise ValueError(f"MetaImage header {path} has no ElementDataFile line")
    return header


def mhd_data_file(path: str | Path, header: dict[str, str]) -> str | None:
    """Name of the data file a MetaImage header points to (None for LOCAL: data in the same file)."""
    name = header["ElementDataFile"]
    if name.upper() == "LOCAL":
        return None
    if " " in name or name.upper().startswith("LIST"):
        raise ValueError(f"MetaImage {path}: multi-file data ({name!r}) is not supported")
    return name


def _mhd_numbers(header, keys, n, case, default=None):
    for k in keys:
        if k in header:
            try:
                vals = [float(v) for v in header[k].split()]
            except ValueError:
                raise ValueError(f"{case}: MetaImage field {k} is not numeric: {header[k]!r}")
            if len(vals) != n:
                raise ValueError(f"{case}: MetaImage field {k} needs {n} numbers, got {header[k]!r}")
            return np.array(vals)
    if default is None:
        raise ValueError(f"{case}: MetaImage header lacks {keys[0]}")
    return np.asarray(default, float)


@reader
def read_metaimage(path: str | Path, *, max_voxels: int, case: str) -> Volume:
    """Read a MetaImage volume: ``.mhd`` text header + data file (LUNA16), or ``.mha`` (LOCAL data)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw_header = f.read()
    header_text = raw_header[:64 * 1024].decode("latin-1")
    header = read_mhd_header(path, header_text)
    if int(float(header.get("NDims", "3"))) != 3:
        raise ValueError(f"{case}: MetaImage {path} has NDims={header.get('NDims')}; expected 3")
    if int(float(header.get("ElementNumberOfChannels", "1"))) != 1:
        raise ValueError(f"{case}: MetaImage {path} has several channels per voxel")
    dims = _mhd_numbers(header, ("DimSize",), 3, case).astype(int)  # x, y, z
    check_size(tuple(dims[::-1]), max_voxels, case)
    etype = header.get("ElementType", "")
    if etype not in _MET_TYPES:
        raise ValueError(f"{case}: MetaImage {path} has unsupported ElementType {etype!r}")
    msb = header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(_MET_TYPES[etype]).newbyteorder(">" if msb else "<")
    data_name = mhd_data_file(path, header)
    if data_name is None:
        # LOCAL: the data follow the line "ElementDataFile = LOCAL"
        marker = raw_header.find(b"ElementDataFile")
        payload = raw_header[raw_header.index(b"\n", marker) + 1:]
    else:
        data_path = contained_data_file(path, data_name, case)
        if not data_path.is_file():
            raise FileNotFoundError(f"{case}: MetaImage data file {data_path} (named in {path.name}) not found")
        payload = data_path.read_bytes()
    n_bytes = int(np.prod(dims)) * dtype.itemsize
    header_size = int(float(header.get("HeaderSize", "0")))
    if header.get("CompressedData", "False").lower() == "true":
        payload = _inflate(payload, n_bytes + max(header_size, 0), path, case)
    if header_size == -1:  # data are the last n_bytes of the file
        header_size = max(len(payload) - n_bytes, 0)
    payload = payload[header_size:]
    if len(payload) < n_bytes:
        raise ValueError(f"{case}: MetaImage data of {path} are truncated: expected {n_bytes} bytes "
                         f"for {tuple(dims)} {etype}, got {len(payload)}")
    data = np.frombuffer(payload, dtype=dtype, count=int(np.prod(dims))).reshape(dims[::-1])
    spacing_xyz = _mhd_numbers(header, ("ElementSpacing", "ElementSize"), 3, case)
    origin_xyz = _mhd_numbers(header, ("Offset", "Origin", "Position"), 3, case, default=(0, 0, 0))
    # ITK: TransformMatrix rows are the direction cosines of file axes x, y, z
    tm = _mhd_numbers(header, ("TransformMatrix", "Rotation", "Orientation"), 9, case,
                      default=np.eye(3).ravel()).reshape(3, 3)
    spacing, origin, direction = _geometry_from_xyz(tm * spacing_xyz[:, None], origin_xyz, np.ones(3), case)
    return Volume(data.astype(np.float32), spacing, origin, direction)


_NRRD_SPACES = {"left-posterior-superior": np.ones(3), "lps": np.ones(3),
                "right-anterior-superior": _RAS_TO_LPS, "ras": _RAS_TO_LPS,
                "left-anterior-superior": np.array([1.0, -1.0, 1.0]), "las": np.array([1.0, -1.0, 1.0])}


@reader
def read_nrrd(path: str | Path, *, max_voxels: int, case: str) -> Volume:
    """Read a NRRD volume (``.nrrd``, attached data); geometry from space directions/origin."""
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception as exc:  # pynrrd raises NRRDError and others for bad headers
        raise ValueError(f"{case}: cannot read NRRD header of {path}: {one_line(exc)}") from exc
    sizes = [int(s) for s in header.get("sizes", [])]
    if len(sizes) != 3:
        raise ValueError(f"{case}: NRRD {path} has sizes {sizes}; expected a 3-D volume")
    check_size(tuple(sizes[::-1]), max_voxels, case)
    for key in ("data file", "datafile"):
        if key in header:  # detached data: pynrrd would open whatever the header names
            name = str(header[key])
            if name.upper().startswith("LIST") or "%" in name:
                raise ValueError(f"{case}: NRRD {path} spreads its data over several files ({name!r}); "
                                 f"not supported")
            contained_data_file(path, name, case)
    try:
        data, header = nrrd.read(str(path), index_order="C")
    except Exception as exc:
        raise ValueError(f"{case}: cannot read the voxels of NRRD {path}: {one_line(exc)}") from exc
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space not in _NRRD_SPACES:
        raise ValueError(f"{case}: NRRD {path} has unsupported space {space!r}")
    if "space directions" in header:
        axes = np.asarray(header["space directions"], dtype=float)
    else:
        axes = np.diag(np.asarray(header.get("spacings", [1.0, 1.0, 1.0]), dtype=float))
    if axes.shape != (3, 3) or not np.all(np.isfinite(axes)):
        raise ValueError(f"{case}: NRRD {path} space directions {axes.tolist()} are not a 3x3 matrix")
    origin_xyz = np.asarray(header.get("space origin", [0.0, 0.0, 0.0]), dtype=float)
    spacing, origin, direction = _geometry_from_xyz(axes, origin_xyz, _NRRD_SPACES[space], case)
    return Volume(np.ascontiguousarray(data, dtype=np.float32), spacing, origin, direction)


@reader
def read_numpy(path: str | Path, *, spacing_zyx, max_voxels: int, case: str) -> Volume:
    """Read a (Z, Y, X) array from ``.npy`` or ``.npz`` (key ``image``, or its only array), in HU.

    Parameters
    ----------
    spacing_zyx
        Voxel size in mm; NumPy files carry none, so it must be given.
    """
    if spacing_zyx is None:
        raise ValueError(f"{case}: {Path(path).name} is a NumPy array without a voxel spacing; "
                         f"give one (npy_spacing_zyx / --npy-spacing z,y,x)")
    try:
        if str(path).endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "image" if "image" in keys else (keys[0] if len(keys) == 1 else None)
                arr = None if key is None else z[key]
        else:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # zip/format errors of a corrupt file; object arrays refused unpickled
        raise ValueError(f"{case}: cannot read NumPy file {path}: {one_line(exc)}") from exc
    if arr is None:
        raise ValueError(f"{case}: {path} holds arrays {keys}; name the volume 'image'")
    if arr.ndim != 3:
        raise ValueError(f"{case}: {path} holds an array of shape {arr.shape}; expected (Z, Y, X)")
    if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)):
        raise ValueError(f"{case}: {path} holds {arr.dtype} values; expected real numbers")
    check_size(arr.shape, max_voxels, case)
    sp = tuple(float(s) for s in spacing_zyx)
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"{case}: NumPy spacing must be three positive numbers (z, y, x) in mm, got {spacing_zyx}")
    return Volume(np.array(arr, dtype=np.float32), sp, (0.0, 0.0, 0.0), np.eye(3))
