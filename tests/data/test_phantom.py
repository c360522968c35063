import numpy as np
import pytest

from tcpc_data.phantom import PADDING_HU, make_phantom, write_archive


def test_phantom_is_seeded_and_has_lesions_in_lungs():
    a = make_phantom(seed=3, n_lesions=5, classes=(0, 1, 2))
    b = make_phantom(seed=3, n_lesions=5, classes=(0, 1, 2))
    assert np.array_equal(a.hu, b.hu) and a.lesions == b.lesions
    assert a.hu.dtype == np.int16 and a.hu.min() == PADDING_HU
    for les in a.lesions:
        # lesion centres are tissue-dense (solid core even for ground-glass), far above lung HU
        assert a.hu[les.centre_zyx] > -200
    assert not np.array_equal(a.hu, make_phantom(seed=4, n_lesions=5).hu)


def test_phantom_rejects_bad_parameters():
    with pytest.raises(ValueError, match="shape"):
        make_phantom(shape=(8, 96, 96))
    with pytest.raises(ValueError, match="classes"):
        make_phantom(classes=(5,))


def test_archive_writes_nifti_and_labels(tmp_path):
    labels = write_archive(tmp_path, n_cases=2, seed=1, n_lesions=2)
    rows = labels.read_text().strip().splitlines()
    assert rows[0] == "case,z,y,x,label" and len(rows) == 5
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == ["phantom-000.nii.gz", "phantom-001.nii.gz"]
