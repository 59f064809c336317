"""Writes densenet-cli/src/imagenet_classes.txt: the 1000 ImageNet-1k class names, one a
line in class-index order, as torchvision lists them (`DenseNet121_Weights.IMAGENET1K_V1
.meta["categories"]`).

    pip install torchvision && python tools/export_imagenet_labels.py
"""
from pathlib import Path

from torchvision.models import DenseNet121_Weights

out = Path(__file__).resolve().parent.parent / "densenet-cli" / "src" / "imagenet_classes.txt"
categories = DenseNet121_Weights.IMAGENET1K_V1.meta["categories"]
assert len(categories) == 1000
out.write_text("\n".join(categories) + "\n")
print(out, len(categories))
