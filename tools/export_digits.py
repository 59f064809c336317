"""Exports scikit-learn's handwritten digits as the committed training fixture.

The dataset: 1,797 8x8 grey-level images of the digits 0-9, pixel values 0..16
(scikit-learn's `load_digits`, a copy of the test part of the UCI "Optical Recognition
of Handwritten Digits" data set, Alpaydin & Kaynak 1998; see fixtures/digits/LICENSE).

The split is fixed here, once: scikit-learn's
`train_test_split(range(1797), test_size=360, stratify=labels, random_state=0)`, so the
held-out 360 images (20%) have the dataset's class proportions. The file
`fixtures/digits/digits.safetensors` holds, all as uint8:

    train_images [1437, 8, 8]   train_labels [1437]   train_index [1437] (u16: row in load_digits)
    test_images  [360, 8, 8]    test_labels  [360]    test_index  [360]  (u16)

in the order of the split's output. It also prints the normalisation constants the Rust
side uses (`fixtures/digits/digits.rs`): mean and standard deviation of the training
pixels after dividing by 16.

    /work/venv/bin/python tools/export_digits.py
"""

from pathlib import Path

import numpy as np
import sklearn
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "digits" / "digits.safetensors"


def main() -> None:
    digits = load_digits()
    images = digits.images  # float64 [1797, 8, 8], integral values 0..16
    labels = digits.target
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert np.all(images == np.round(images)) and images.min() == 0 and images.max() == 16
    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=360, stratify=labels, random_state=0)

    tensors = {}
    for name, rows in (("train", train), ("test", test)):
        tensors[f"{name}_images"] = images[rows].astype(np.uint8)
        tensors[f"{name}_labels"] = labels[rows].astype(np.uint8)
        tensors[f"{name}_index"] = rows.astype(np.uint16)
    save_file(
        tensors,
        str(OUT),
        metadata={
            "source": "sklearn.datasets.load_digits (UCI optdigits, Alpaydin & Kaynak 1998)",
            "split": "train_test_split(range(1797), test_size=360, stratify=target, random_state=0)",
            "sklearn": sklearn.__version__,
        },
    )
    x = images[train] / 16.0
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    print(f"train {len(train)}, test {len(test)}")
    print("test class counts", np.bincount(labels[test], minlength=10).tolist())
    print(f"train pixel mean after /16: {x.mean():.6f}, std: {x.std():.6f}")
    print("first test labels", labels[test][:10].tolist(), "rows", test[:10].tolist())


if __name__ == "__main__":
    main()
