"""Images travel as uint8 pixels; the node normalises them with its model's mean and std."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from carbonedge.client.images import image_pixels, preprocess_image
from carbonedge.client.requests import make_request, to_tensor_map
from carbonedge.errors import InvalidTensor
from carbonedge.node_agent.backend import ServedModel
from carbonedge.node_agent.inputs import model_input
from carbonedge.partitioner.catalog import ModelSpec, Preprocess
from carbonedge.protocol.codec import TensorLimits, encode_tensor
from carbonedge.protocol.pixels import model_shape, normalise_pixels, pixel_shape

LIMITS = TensorLimits()


def _image(width: int = 300, height: int = 260, seed: int = 3) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _served(preprocess: Preprocess | None = None) -> ServedModel:
    spec = ModelSpec(name="m", source="builtin:mobilenetv2",
                     preprocess=preprocess or Preprocess())
    return ServedModel(spec=spec, num_classes=1000, random_init=True, weights_source="random",
                       n_blocks=0)


def test_pixels_are_the_crop_as_uint8_a_quarter_of_the_float_bytes() -> None:
    pixels = image_pixels(_image())
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 224, 224, 3)
    tensor = to_tensor_map(_image(), LIMITS)
    assert tensor["dtype"] == "uint8" and tensor["shape"] == [1, 224, 224, 3]
    assert len(tensor["data"]) * 4 == len(encode_tensor(preprocess_image(_image()))["data"])


def test_normalising_on_the_node_gives_the_producers_float_input_exactly() -> None:
    buf = io.BytesIO()
    _image(500, 320).save(buf, format="PNG")
    tensor = to_tensor_map(buf.getvalue(), LIMITS)
    on_node = model_input(tensor, _served(), LIMITS)
    assert on_node.dtype == np.float32 and on_node.shape == (1, 3, 224, 224)
    assert on_node.flags["C_CONTIGUOUS"]
    assert np.array_equal(on_node, preprocess_image(buf.getvalue()))


def test_the_node_uses_its_own_models_mean_and_std() -> None:
    pixels = np.full((1, 224, 224, 3), 255, np.uint8)
    served = _served(preprocess=Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)))
    x = model_input(encode_tensor(pixels), served, LIMITS)
    assert x[0, :, 0, 0].tolist() == [2.0, 1.0, 0.5]


def test_pixels_without_the_batch_axis_are_accepted() -> None:
    pixels = np.zeros((224, 224, 3), np.uint8)
    x = model_input(encode_tensor(pixels), _served(), LIMITS)
    assert x.shape == (1, 3, 224, 224)
    assert np.allclose(x[0, 0], -0.485 / 0.229)


@pytest.mark.parametrize(("shape", "needs"), [((1, 3, 224, 224), "[1, 224, 224, 3]"),
                                              ((1, 64, 64, 3), "[1, 224, 224, 3]"),
                                              ((2, 224, 224, 3), "[1, 224, 224, 3]")])
def test_misshapen_pixels_name_the_shape_they_need(shape: tuple[int, ...], needs: str) -> None:
    with pytest.raises(InvalidTensor) as e:
        model_input(encode_tensor(np.zeros(shape, np.uint8)), _served(), LIMITS)
    assert e.value.field == "input.shape" and needs in str(e.value)


def test_a_model_without_three_channels_takes_no_pixels() -> None:
    with pytest.raises(InvalidTensor, match="takes no RGB image: send floats"):
        pixel_shape((1, 28, 28, 3), (1, 28, 28))


def test_floats_pass_as_the_models_input_and_other_dtypes_are_refused() -> None:
    x = np.ones((3, 224, 224), np.float32)
    assert model_input(encode_tensor(x), _served(), LIMITS).shape == (1, 3, 224, 224)
    with pytest.raises(InvalidTensor, match="'float64': a model takes float32") as e:
        model_input(encode_tensor(x.astype(np.float64)), _served(), LIMITS)
    assert e.value.field == "input.dtype"


def test_a_model_chosen_by_the_broker_is_told_the_shape_the_pixels_stand_for() -> None:
    tensor = to_tensor_map(_image(), LIMITS)
    request = make_request(family="mobilenet", tensor=tensor)
    assert request.input_shape == (1, 3, 224, 224)
    assert model_shape(tensor["shape"]) == [1, 3, 224, 224]


def test_normalise_pixels_is_torchvisions_to_tensor_then_normalize() -> None:
    pixels = np.arange(224 * 224 * 3, dtype=np.int64).reshape(1, 224, 224, 3) % 256
    x = normalise_pixels(pixels.astype(np.uint8), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = (pixels[0].transpose(2, 0, 1) / 255.0 - np.array([0.485, 0.456, 0.406])[:, None,
                None]) / np.array([0.229, 0.224, 0.225])[:, None, None]
    assert np.abs(x[0] - expected).max() < 1e-5
