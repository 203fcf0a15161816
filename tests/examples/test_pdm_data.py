"""The predictive-maintenance data generator: shapes, determinism, and the physics it claims."""

from __future__ import annotations

import numpy as np
import pytest

from examples.predictive_maintenance import data as pdm
from examples.predictive_maintenance.data import (
    CLASSES,
    FEATURES,
    FS,
    ORDERS,
    SPLITS,
    WINDOW,
    BearingGeometry,
    WindowParams,
    envelope_spectrum,
    features,
    make_split,
    model_inputs,
    order_spectra,
    synthesize,
)


def _window(label: str, rpm: float = 1800.0, n: int = 4 * FS, seed: int = 5, **kw) -> np.ndarray:
    params = {"sensor_noise_g": 0.03, "fault_g": 0.4, "load": 1.0} | kw
    return synthesize(WindowParams(label=CLASSES.index(label), speed_rpm=rpm, seed=seed, **params), n=n)


def _envelope_peak(x: np.ndarray, lo: float = 3.0, hi: float = 400.0) -> float:
    f, mag = envelope_spectrum(x)
    sel = (f > lo) & (f < hi)
    return float(f[sel][np.argmax(mag[sel])])


def test_defect_frequencies_of_the_cwru_bearing():
    # SKF 6205 at 1797 rpm: the published CWRU values are 3.5848, 5.4152, 4.7135 (2×BSF), 0.39828 × shaft speed
    f = BearingGeometry().frequencies(1.0)
    assert f["bpfo"] == pytest.approx(3.5848, abs=2e-3)
    assert f["bpfi"] == pytest.approx(5.4152, abs=2e-3)
    assert 2 * f["bsf"] == pytest.approx(4.7135, abs=2e-3)
    assert f["ftf"] == pytest.approx(0.39828, abs=1e-3)
    # a contact angle lowers the outer-race rate and raises the inner-race one towards n/2
    tilted = BearingGeometry(contact_angle_deg=40).frequencies(1.0)
    assert tilted["bpfo"] > f["bpfo"] and tilted["bpfi"] < f["bpfi"]


def test_geometry_rejects_a_ball_bigger_than_the_pitch_circle():
    with pytest.raises(ValueError, match="smaller than the pitch"):
        BearingGeometry(ball_diameter_mm=40, pitch_diameter_mm=39)


@pytest.mark.parametrize("label, key, factor", [
    ("outer_race", "bpfo", 1), ("inner_race", "bpfi", 1), ("ball", "bsf", 2), ("cage", "ftf", 1),
])
@pytest.mark.parametrize("rpm", [1300.0, 2600.0])
def test_envelope_spectrum_peaks_at_the_defect_frequency(label, key, factor, rpm):
    x = _window(label, rpm)
    expected = factor * BearingGeometry().frequencies(rpm / 60)[key]
    resolution = FS / x.size
    assert abs(_envelope_peak(x, lo=3.0 if key == "ftf" else 20.0) - expected) <= 2 * resolution + 0.01 * expected


def test_healthy_envelope_has_no_outer_race_line():
    f, mag = envelope_spectrum(_window("healthy"))
    bpfo = BearingGeometry().frequencies(30.0)["bpfo"]
    near = mag[np.abs(f - bpfo) < 2].max()
    faulty_f, faulty = envelope_spectrum(_window("outer_race"))
    assert near < 0.2 * faulty[np.abs(faulty_f - bpfo) < 2].max()


def test_imbalance_raises_the_1x_line_with_speed_squared():
    def one_x(label: str, rpm: float) -> float:
        x = _window(label, rpm, unbalance=0.2 if label == "imbalance" else 0.02)
        spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) * 2 / np.hanning(x.size).sum()
        f = np.fft.rfftfreq(x.size, 1 / FS)
        return float(spec[np.abs(f - rpm / 60) < 1.0].max())

    assert one_x("imbalance", 1800) > 5 * one_x("healthy", 1800)
    assert one_x("imbalance", 2400) / one_x("imbalance", 1200) == pytest.approx(4.0, rel=0.1)


def test_split_shapes_labels_and_dtypes():
    ds = make_split("val", per_class=3)
    assert ds.x.shape == (3 * len(CLASSES), 1, WINDOW) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and np.bincount(ds.y).tolist() == [3] * len(CLASSES)
    assert np.all(np.isfinite(ds.x))


def test_splits_are_deterministic_by_seed_and_prefix_stable():
    a, b = make_split("train", per_class=2), make_split("train", per_class=2)
    np.testing.assert_array_equal(a.x, b.x)
    bigger = make_split("train", per_class=4)
    np.testing.assert_array_equal(bigger.x[: len(a)], a.x)  # sample i depends only on (seed, i)
    other = make_split("val", per_class=2)
    assert not np.allclose(other.x, a.x)
    reseeded = make_split(SPLITS["train"].model_copy(update={"seed": 999}), per_class=2)
    assert not np.allclose(reseeded.x, a.x)


def test_field_speeds_were_never_seen_in_training():
    field = make_split("field", per_class=5)
    for lo, hi in SPLITS["train"].speed_rpm:
        inside = (field.speed_rpm >= lo * 0.99) & (field.speed_rpm <= hi * 1.01)
        assert not inside.any()


def test_unknown_split_and_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        make_split("test")
    with pytest.raises(ValueError, match="at least 1"):
        make_split("val", per_class=0)
    with pytest.raises(ValueError, match="one positive speed per window"):
        order_spectra(np.zeros((2, 1, WINDOW), np.float32), np.array([1800.0]))


def test_features_match_their_definitions():
    t = np.arange(WINDOW) / FS
    sine = (0.5 * np.sin(2 * np.pi * 100 * t)).astype(np.float32)[None, None]
    f = features(sine)
    assert set(f) == set(FEATURES) and all(v.shape == (1, 1) for v in f.values())
    assert f["rms"][0, 0] == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
    assert f["crest_factor"][0, 0] == pytest.approx(np.sqrt(2), rel=1e-2)
    assert f["kurtosis"][0, 0] == pytest.approx(1.5, rel=1e-2)  # a sine's kurtosis
    assert f["band_low"][0, 0] == pytest.approx(f["rms"][0, 0], rel=1e-2) and f["band_high"][0, 0] < 1e-3
    noise = np.random.default_rng(0).normal(0, 1, (1, 1, WINDOW)).astype(np.float32)
    assert features(noise)["kurtosis"][0, 0] == pytest.approx(3.0, abs=0.3)


def test_impacts_raise_kurtosis_and_the_resonance_band():
    healthy, outer = features(_window("healthy", n=WINDOW)[None]), features(_window("outer_race", n=WINDOW)[None])
    assert outer["kurtosis"][0, 0] > healthy["kurtosis"][0, 0] + 1
    assert outer["band_high"][0, 0] > healthy["band_high"][0, 0]


def test_order_tracking_puts_the_outer_race_line_at_the_same_order_at_any_speed():
    bpfo_order = BearingGeometry().frequencies(1.0)["bpfo"]
    for rpm in (1300.0, 2000.0, 2800.0):
        x = _window("outer_race", rpm, n=WINDOW)[None]
        env = order_spectra(x, np.array([rpm]))[0, 0]
        band = (ORDERS > 2) & (ORDERS < 8)
        assert abs(ORDERS[band][np.argmax(env[band])] - bpfo_order) < 0.15


def test_model_inputs_feed_the_model_in_order():
    from examples.predictive_maintenance.model import INPUT_NAMES, N_CLASSES

    ds = make_split("field", per_class=1)
    inputs = model_inputs(ds.x, ds.speed_rpm)
    assert tuple(inputs) == INPUT_NAMES == ("spectrum", *FEATURES)
    assert len(CLASSES) == N_CLASSES
    assert inputs["spectrum"].shape == (len(CLASSES), 2, len(ORDERS))
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in inputs.values())


def test_compress_data_function_returns_train_and_val_with_labels():
    train, val = pdm.compress_data(per_class_train=2, per_class_val=1)
    assert len(train["y"]) == 2 * len(CLASSES) and len(val["y"]) == len(CLASSES)
    assert set(train) == {"spectrum", *FEATURES, "y"}


def test_macro_f1_agrees_with_scikit_learn():
    from sklearn.metrics import f1_score

    from examples.predictive_maintenance.model import macro_f1

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 200)
    logits = rng.normal(size=(200, 6))
    logits[np.arange(200), y] += rng.uniform(0, 2, 200)
    pred = logits.argmax(1)
    assert macro_f1({"logits": logits}, y) == pytest.approx(f1_score(y, pred, average="macro"))
