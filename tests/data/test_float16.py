"""The store's float16 images: the compiled conversion (tcpc_data.float16) and the library path it
replaces (TCPC_FLOAT16=numpy: NumPy's astype) write the same bits."""
import numpy as np
import pytest

from tcpc_data.float16 import numpy_casts
from tcpc_data.ingest.normalise import as_stored, normalise


@pytest.mark.parametrize("shape", [(3, 5, 7), (5, 256, 1024)])  # the serial and the parallel kernel
def test_numpys_casts_give_the_same_store_values(shape, monkeypatch):
    hu = np.random.default_rng(1).uniform(-1024, 3071, size=shape).astype(np.float32)
    values, _ = normalise(hu)
    compiled, _ = normalise(hu, out=np.empty(shape, np.float16))
    stored = as_stored(values, np.float16)
    assert not numpy_casts()
    monkeypatch.setenv("TCPC_FLOAT16", "numpy")
    assert numpy_casts()
    library, _ = normalise(hu, out=np.empty(shape, np.float16))
    np.testing.assert_array_equal(library.view(np.uint16), compiled.view(np.uint16))
    np.testing.assert_array_equal(as_stored(values, np.float16).view(np.uint16), stored.view(np.uint16))
    np.testing.assert_array_equal(stored.view(np.uint16), values.astype(np.float16).view(np.uint16))
