"""Reference for the Rust image preprocessing (densenet_runtime::image).

Writes tests/fixtures/astronaut.png (and .jpg), a 400x300 crop of scikit-image's
`astronaut` photo (NASA, public domain), and tests/fixtures/astronaut.preprocessed.safetensors
holding `pixels`: torchvision's ImageNet evaluation transform of the PNG,
Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std), float32, (3, 224, 224).

    pip install torch torchvision pillow scikit-image safetensors
    python tools/make_image_fixture.py
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data
from torchvision import transforms

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main() -> None:
    photo = Image.fromarray(data.astronaut()[64:448, :, :])  # 512 wide, 384 high
    photo = photo.resize((400, 300), Image.BILINEAR)
    png, jpg = OUT / "astronaut.png", OUT / "astronaut.jpg"
    photo.save(png, optimize=True)
    photo.save(jpg, quality=92)
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    pixels = transform(Image.open(png).convert("RGB")).to(torch.float32).contiguous()
    save_file({"pixels": pixels}, OUT / "astronaut.preprocessed.safetensors")
    print(png, png.stat().st_size, jpg, jpg.stat().st_size, tuple(pixels.shape))
    print("first values", np.asarray(pixels[:, 0, :4]))


if __name__ == "__main__":
    main()
