"""Client-side image preprocessing: shape, parity with torchvision, and bad inputs."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carbonedge.client.images import preprocess_image
from carbonedge.errors import InvalidRequest


def _noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth gradient plus noise, so resampling differences show but stay small."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    yy, xx = np.mgrid[0:height, 0:width]
    base = (xx / width * 200 + yy / height * 50)[..., None]
    arr = np.clip(base + rng.integers(0, 40, (height, width, channels)), 0, 255).astype(np.uint8)
    if channels == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr, mode)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _torchvision_reference(img: Image.Image) -> np.ndarray:
    from torchvision import transforms

    pipeline = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    return pipeline(img.convert("RGB")).unsqueeze(0).numpy()


@pytest.mark.parametrize("size", [(320, 240), (240, 400), (500, 500), (1000, 257)])
def test_png_matches_torchvision(tmp_path: Path, size: tuple[int, int]) -> None:
    img = _noise_image(*size)
    path = tmp_path / "img.png"
    img.save(path)

    out = preprocess_image(path)

    assert out.shape == (1, 3, 224, 224)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    reference = _torchvision_reference(Image.open(path))
    assert np.abs(out - reference).max() < 1e-2


def test_sources_agree(tmp_path: Path) -> None:
    img = _noise_image(300, 200)
    path = tmp_path / "img.png"
    img.save(path)
    from_path = preprocess_image(str(path))
    assert np.array_equal(preprocess_image(path), from_path)
    assert np.array_equal(preprocess_image(_png_bytes(img)), from_path)
    assert np.array_equal(preprocess_image(img), from_path)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_greyscale_and_rgba(mode: str) -> None:
    img = _noise_image(300, 260, mode=mode)
    out = preprocess_image(_png_bytes(img))
    assert out.shape == (1, 3, 224, 224)
    assert np.isfinite(out).all()
    assert np.abs(out - _torchvision_reference(img)).max() < 1e-2
    if mode == "L":  # grey in, equal channels before normalisation
        raw = out[0] * np.array([0.229, 0.224, 0.225])[:, None, None]
        raw += np.array([0.485, 0.456, 0.406])[:, None, None]
        assert np.allclose(raw[0], raw[1], atol=1e-5) and np.allclose(raw[1], raw[2], atol=1e-5)


def test_small_image_is_upscaled() -> None:
    assert preprocess_image(_noise_image(40, 30)).shape == (1, 3, 224, 224)


def test_corrupt_bytes() -> None:
    with pytest.raises(InvalidRequest) as info:
        preprocess_image(b"\x89PNG definitely not an image")
    assert info.value.field == "image"
    assert info.value.__cause__ is not None


def test_truncated_png() -> None:
    data = _png_bytes(_noise_image(300, 300))
    with pytest.raises(InvalidRequest) as info:
        preprocess_image(data[: len(data) // 2])
    assert info.value.field == "image"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="missing.png") as info:
        preprocess_image(tmp_path / "missing.png")
    assert info.value.field == "image"


def test_wrong_type() -> None:
    with pytest.raises(InvalidRequest):
        preprocess_image(12345)  # type: ignore[arg-type]


def test_does_not_import_torch() -> None:
    code = (
        "import sys, io; from PIL import Image; "
        "from carbonedge.client.images import preprocess_image; "
        "buf = io.BytesIO(); Image.new('RGB', (300, 250)).save(buf, 'PNG'); "
        "assert preprocess_image(buf.getvalue()).shape == (1, 3, 224, 224); "
        "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _tiny_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG")  # 1 bit a pixel to build
    return buf.getvalue()


@pytest.mark.parametrize(
    ("size", "limit"),
    [
        ((60000, 1), "a side is over the limit of 16384"),
        ((1, 20000), "a side is over the limit of 16384"),
        ((10000, 100), "aspect ratio 100:1 is over the limit of 20:1"),
        ((12000, 12000), "over the limit of 50,000,000 pixels"),
        ((8000, 7000), "over the limit of 50,000,000"),
    ],
)
def test_image_bombs_are_refused_before_decoding(size: tuple[int, int], limit: str) -> None:
    data = _tiny_png(*size)
    assert len(data) < 500_000  # tiny files that declare a huge image
    with pytest.raises(InvalidRequest, match=limit) as info:
        preprocess_image(data)
    assert info.value.field == "image"


def test_a_decoded_pil_image_is_bounded_too() -> None:
    with pytest.raises(InvalidRequest, match="aspect ratio"):
        preprocess_image(Image.new("L", (5000, 10)))


def test_the_254_byte_bomb_fails_fast_in_little_memory() -> None:
    """A few hundred bytes of PNG declaring 60000x1 took 47 s and 15.6 GB before the size
    was checked ahead of decoding; now the peak RSS of the process does not move."""
    code = (
        "import io\n"
        "from PIL import Image\n"
        "from carbonedge.client.images import preprocess_image\n"
        "from carbonedge.errors import InvalidRequest\n"
        "buf = io.BytesIO(); Image.new('RGB', (60000, 1)).save(buf, format='PNG')\n"
        "def peak_kib():  # VmHWM: our own peak (ru_maxrss keeps the parent's, from fork)\n"
        "    with open('/proc/self/status') as status:\n"
        "        return next(int(x.split()[1]) for x in status if x.startswith('VmHWM:'))\n"
        "before = peak_kib()\n"
        "try:\n"
        "    preprocess_image(buf.getvalue())\n"
        "except InvalidRequest:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('not refused')\n"
        "print(peak_kib() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    grown_kib = int(out.stdout.strip())
    assert grown_kib < 16 * 1024, f"peak RSS grew by {grown_kib} KiB"


def test_a_large_jpeg_is_decoded_at_reduced_scale() -> None:
    img = _noise_image(2400, 1800)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    with Image.open(io.BytesIO(buf.getvalue())) as probe:
        probe.draft("RGB", (683, 512))
        assert probe.size == (1200, 900)  # what the decoder produces: half of each side
    out = preprocess_image(buf.getvalue())
    full = _torchvision_reference(Image.open(io.BytesIO(buf.getvalue())))
    assert out.shape == (1, 3, 224, 224)
    assert np.abs(out - full).max() < 0.1  # a couple of grey levels from the exact decode
