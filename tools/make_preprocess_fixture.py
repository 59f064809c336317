"""Keras's `preprocess_input` in its three modes on a small fixed image.

Writes tests/fixtures/preprocess_input.safetensors: `image`, a 2x3 RGB uint8 image (HWC,
values chosen to include 0, 255 and odd values), and per mode (`torch`, `tf`, `caffe`) the
float32 array that
`keras.applications.imagenet_utils.preprocess_input(image.astype("float32"), mode=...)`
returns (HWC, channels_last; "caffe" channel 0 is blue). The metadata records the Keras
version and backend. tests/image_folder.rs compares
`densenet_runtime::image::Normalization` with it.

The safetensors file is written by hand (8-byte little-endian header length, JSON header,
raw little-endian data), so the Keras environment needs no `safetensors` package.

    KERAS_BACKEND=jax /work/venv-keras/bin/python tools/make_preprocess_fixture.py
"""

import json
import os
import pathlib
import struct

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.applications import imagenet_utils  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "preprocess_input.safetensors"

IMAGE = np.array(
    [
        [[0, 128, 255], [1, 2, 3], [254, 127, 64]],
        [[255, 255, 255], [17, 200, 99], [0, 0, 0]],
    ],
    dtype=np.uint8,
)


def save_safetensors(path, tensors, metadata):
    """The safetensors format: header length (u64 LE), JSON header, tensor bytes."""
    dtypes = {np.dtype("uint8"): "U8", np.dtype("float32"): "F32"}
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": dtypes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    tensors = {"image": IMAGE}
    for mode in ("torch", "tf", "caffe"):
        x = IMAGE.astype("float32")
        y = imagenet_utils.preprocess_input(x, data_format="channels_last", mode=mode)
        assert y.dtype == np.float32, y.dtype
        tensors[mode] = np.asarray(y)
    metadata = {"keras": keras.__version__, "backend": keras.backend.backend(), "layout": "HWC"}
    save_safetensors(OUT, tensors, metadata)
    print(f"wrote {OUT}")
    for mode in ("torch", "tf", "caffe"):
        print(mode, tensors[mode][0, 0])


if __name__ == "__main__":
    main()
