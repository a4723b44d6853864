"""AIPP: the config parser, and the AIPP stage compiled into ONNX against a numpy reference."""
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageFilter

from offline_helpers import STANDARD_AIPP, synthetic_rgb
from seresnext.aipp import (AippConfigError, apply_aipp_reference, compile_aipp, encode_source,
                            load_aipp_config, parse_aipp_config)

STANDARD_TEXT = STANDARD_AIPP.read_text()


def _graph(config, batch="N"):
    model = compile_aipp(config, input_name="image", output_name="out", batch=batch)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda source: session.run(None, {"image": source})[0]


def test_standard_config_has_the_torchvision_values():
    config = load_aipp_config(STANDARD_AIPP)
    assert (config.input_format, config.src_image_size_w, config.src_image_size_h) == ("YUV420SP_U8", 256, 256)
    assert config.crop and (config.load_start_pos_h, config.load_start_pos_w) == (16, 16)
    assert config.output_size == (224, 224)
    assert config.csc_switch and config.rbuv_swap_switch
    assert config.matrix == ((256, 0, 359), (256, -88, -183), (256, 454, 0))
    assert config.input_bias == (0, 128, 128)
    np.testing.assert_allclose(config.min_chn, [255 * m for m in (0.485, 0.456, 0.406)])
    np.testing.assert_allclose(config.var_reci_chn, [1 / (255 * s) for s in (0.229, 0.224, 0.225)], rtol=1e-12)


def test_reference_matches_aipp_arithmetic_by_hand():
    config = load_aipp_config(STANDARD_AIPP)
    source = np.zeros((1, 384, 256), np.uint8)
    source[0, :256] = 100  # Y
    source[0, 256:, 0::2] = 200  # first chroma byte: V (the config swaps VU -> UV)
    source[0, 256:, 1::2] = 50  # U
    out = apply_aipp_reference(config, source)[0, :, 0, 0]
    # R = (256*100 + 359*(200-128)) >> 8 = 200; G = (256*100 - 88*(50-128) - 183*72) >> 8 = 75 (floor)
    # B = (256*100 + 454*(50-128)) >> 8 = -39 -> 0
    rgb = np.array([200, 75, 0], np.float32)
    np.testing.assert_allclose(out, (rgb - np.array(config.min_chn)) * np.array(config.var_reci_chn), rtol=1e-6)


@pytest.mark.parametrize("variant", ["standard", "no_swap", "rgb_bgr", "rgb_csc_mean"])
def test_onnx_graph_equals_reference(variant):
    text = STANDARD_TEXT
    if variant == "no_swap":
        text = text.replace("rbuv_swap_switch : true", "rbuv_swap_switch : false")
    elif variant == "rgb_bgr":
        text = ("aipp_op { aipp_mode : static input_format : RGB888_U8 src_image_size_w : 40 src_image_size_h : 30 "
                "crop : true load_start_pos_w : 3 load_start_pos_h : 1 crop_size_w : 32 crop_size_h : 24 "
                "rbuv_swap_switch : true min_chn_0 : 127.5 min_chn_1 : 127.5 min_chn_2 : 127.5 "
                "var_reci_chn_0 : 0.0078431 var_reci_chn_1 : 0.0078431 var_reci_chn_2 : 0.0078431 }")
    elif variant == "rgb_csc_mean":
        text = ("aipp_op {\ninput_format : RGB888_U8\nsrc_image_size_w : 16\nsrc_image_size_h : 8\n"
                "csc_switch : true\nmatrix_r0c0 : 77\nmatrix_r0c1 : 150\nmatrix_r0c2 : 29\nmatrix_r1c0 : -43\n"
                "matrix_r1c1 : -85\nmatrix_r1c2 : 128\nmatrix_r2c0 : 128\nmatrix_r2c1 : -107\nmatrix_r2c2 : -21\n"
                "output_bias_0 : 16\noutput_bias_1 : 128\noutput_bias_2 : 128\nmean_chn_0 : 10\n}\n")
    config = parse_aipp_config(text, variant)
    source = np.random.default_rng(0).integers(0, 256, size=config.input_shape(3), dtype=np.uint8)
    np.testing.assert_array_equal(_graph(config)(source), apply_aipp_reference(config, source))


def test_encoded_image_comes_back_as_the_normalised_crop():
    config = load_aipp_config(STANDARD_AIPP)
    # a photo-like image: smooth colour (4:2:0 keeps full-resolution luma only, like JPEG and DVPP)
    rgb = np.asarray(Image.fromarray(synthetic_rgb(256, 256, seed=3)).filter(ImageFilter.GaussianBlur(2)))
    out = _graph(config)(encode_source(config, rgb)[None])[0]
    crop = rgb[16:240, 16:240].astype(np.float32)
    direct = ((crop / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    error_in_pixel_units = np.abs(out - direct).transpose(1, 2, 0) * 255 * np.array([0.229, 0.224, 0.225])
    assert error_in_pixel_units.mean() < 2.0  # YUV 4:2:0 rounding and AIPP's >> 8
    assert np.median(error_in_pixel_units) <= 1.01
    primaries = np.zeros((256, 256, 3), np.uint8)
    primaries[:, :128, 0] = 255  # pure red on the left, pure blue on the right
    primaries[:, 128:, 2] = 255
    out = _graph(config)(encode_source(config, primaries)[None])[0]
    back = out.transpose(1, 2, 0) / np.array(config.var_reci_chn) + np.array(config.min_chn)
    np.testing.assert_allclose(back[100, 20], [255, 0, 0], atol=3)
    np.testing.assert_allclose(back[100, 200], [0, 0, 255], atol=3)


def test_rgb_source_is_bgr_when_the_config_swaps():
    text = ("aipp_op { input_format : RGB888_U8 src_image_size_w : 4 src_image_size_h : 2 "
            "rbuv_swap_switch : true }")
    config = parse_aipp_config(text)
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(encode_source(config, rgb), rgb[..., ::-1])
    out = _graph(config)(encode_source(config, rgb)[None])[0]
    np.testing.assert_array_equal(out, rgb.transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("change, message", [
    (("min_chn_0 : 123.675", "min_chn_0 : 123.675\n    colour_magic : 3"),
     r"cfg:18: unknown AIPP field 'colour_magic'"),
    (("crop: true", "crop: maybe"), r"cfg:8: crop must be true or false, got 'maybe'"),
    (("crop_size_w : 224", "crop_size_w : wide"), r"cfg:11: crop_size_w must be an integer"),
    (("var_reci_chn_0: 0.0171247538316637", "var_reci_chn_0: 0.01\n    var_reci_chn_0: 0.02"),
     r"cfg:\d+: var_reci_chn_0 is set twice"),
    (("crop: true", "crop: true\n    resize: true"), r"cfg:9: 'resize : true' is not supported"),
    (("aipp_mode:static", "aipp_mode:dynamic"), r"aipp_mode 'dynamic' is not supported"),
    (("input_format : YUV420SP_U8", "input_format : XRGB8888_U8"), r"cfg:3: input_format 'XRGB8888_U8'"),
    (("load_start_pos_h : 16", "load_start_pos_h : 40"), r"the crop \(224x224 at 16,40\) does not fit"),
    (("load_start_pos_w : 16", "load_start_pos_w : 15"), r"needs even load_start_pos_w/h"),
    (("matrix_r0c0: 256", "matrix_r0c0: 99999"), r"matrix_r0c0 99999 is outside"),
    (("input_bias_1: 128", "input_bias_1: 300"), r"input_bias_1 300 is outside"),
    (("}", ""), r"unexpected end of file"),
    (("aipp_op{", "aipp_op{\n  input_para {"), r"dynamic AIPP\) are not supported"),
    (("src_image_size_w : 256", "src_image_size_w : 0"), r"src_image_size_w and src_image_size_h are required"),
])
def test_bad_fields_are_rejected_with_the_line(change, message):
    old, new = change
    assert old in STANDARD_TEXT
    with pytest.raises(AippConfigError, match=message):
        parse_aipp_config(STANDARD_TEXT.replace(old, new, 1), "cfg")


def test_missing_or_empty_config_file(tmp_path):
    with pytest.raises(AippConfigError, match="no such AIPP config file"):
        load_aipp_config(tmp_path / "nope.config")
    (tmp_path / "empty.config").write_text("# nothing\n")
    with pytest.raises(AippConfigError, match="empty AIPP config"):
        load_aipp_config(tmp_path / "empty.config")
