"""Synthetic, physically motivated vibration data for rolling-bearing fault detection.

One window is what an accelerometer on a bearing housing records in ``WINDOW / FS`` seconds:

* **shaft harmonics** 1×, 2×, 3× of the running speed; the 1× amplitude grows with speed² (an
  unbalanced rotor's centrifugal force), so a rotor with **imbalance** shows a large 1× line;
* **bearing defects** as trains of impacts, one per time a rolling element meets the defect, at the
  characteristic frequencies computed from the bearing geometry and the shaft speed
  (:meth:`BearingGeometry.frequencies`): BPFO (outer race), BPFI (inner race), 2×BSF (a ball defect
  strikes both races once per spin), FTF (cage). Each impact rings the housing's **structural resonance**
  (a damped sinusoid at 2.2–3.4 kHz); impact strength is **amplitude-modulated** the way the load zone
  sees it: constant for a stationary outer race, at 1× for an inner race that rotates through the load
  zone, at the cage frequency for a ball carried around by the cage; impact times jitter by 1–2 % (slip);
* **varying speed** (a slow ± 0.5 % wobble inside the window, different speeds per window) and **load**
  (scales the impacts and the rolling noise), **rolling noise** through the resonance and **sensor noise**.

Splits use separate seeds; the held-out ``field`` set runs at speeds never seen in training, with a
somewhat noisier sensor and heavier load — what a model meets after deployment, and what the devices'
streamed features (:func:`features`) make visible as drift.

What a device feeds the model (:func:`model_inputs`, plain numpy, no torch): the window's envelope and
plain spectra read at multiples of the tachometer speed (:func:`order_spectra`, classic envelope analysis
with order tracking) and the per-window condition indicators (:func:`features`), one model input each so
the agent's per-input statistics stream them as drift signals.

Everything is numpy and deterministic: sample ``i`` of a split depends only on ``(seed, i)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CLASSES",
    "FEATURES",
    "FS",
    "ORDERS",
    "SPLITS",
    "WINDOW",
    "BearingGeometry",
    "Dataset",
    "SplitConfig",
    "WindowParams",
    "compress_data",
    "envelope_spectrum",
    "features",
    "make_split",
    "model_inputs",
    "order_spectra",
    "synthesize",
]

#: sampling rate of the accelerometer (Hz) and samples per window (0.5 s)
FS = 8192
WINDOW = 4096
#: orders (multiples of the shaft speed) at which the model sees the spectra: 0.05 … 12.8
ORDERS = np.arange(1, 257) * 0.05
CLASSES = ("healthy", "outer_race", "inner_race", "ball", "cage", "imbalance")
#: per-window features a device computes and streams (one model input each, so drift is per feature)
FEATURES = ("rms", "kurtosis", "crest_factor", "band_low", "band_mid", "band_high")
#: band edges (Hz) of ``band_low`` (shaft harmonics), ``band_mid`` and ``band_high`` (resonance)
BANDS = ((0.0, 500.0), (500.0, 2000.0), (2000.0, FS / 2))
_KERNEL = 256  # samples of one resonance ring-down kept (decays to < 1e-3 well before)


class BearingGeometry(BaseModel):
    """A deep-groove ball bearing (defaults: SKF 6205-2RS, the drive-end bearing of the CWRU test rig)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_balls: int = Field(default=9, ge=3)
    ball_diameter_mm: float = Field(default=7.94, gt=0)
    pitch_diameter_mm: float = Field(default=39.04, gt=0)
    contact_angle_deg: float = Field(default=0.0, ge=0, lt=90)

    @model_validator(mode="after")
    def _fits(self) -> BearingGeometry:
        if self.ball_diameter_mm >= self.pitch_diameter_mm:
            raise ValueError("ball diameter must be smaller than the pitch diameter")
        return self

    def frequencies(self, shaft_hz: float) -> dict[str, float]:
        """Characteristic defect frequencies (Hz) at shaft speed ``shaft_hz`` (outer race stationary).

        ``bpfo = n/2·fr·(1 − d/D·cos φ)``, ``bpfi = n/2·fr·(1 + d/D·cos φ)``,
        ``bsf = D/(2d)·fr·(1 − (d/D·cos φ)²)``, ``ftf = fr/2·(1 − d/D·cos φ)``.
        """
        r = self.ball_diameter_mm / self.pitch_diameter_mm * np.cos(np.radians(self.contact_angle_deg))
        n = self.n_balls
        return {
            "bpfo": n / 2 * shaft_hz * (1 - r),
            "bpfi": n / 2 * shaft_hz * (1 + r),
            "bsf": self.pitch_diameter_mm / (2 * self.ball_diameter_mm) * shaft_hz * (1 - r * r),
            "ftf": shaft_hz / 2 * (1 - r),
        }


class SplitConfig(BaseModel):
    """How one split is drawn: its seed, size and the operating conditions it covers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    per_class: int = Field(ge=1)
    #: shaft speed ranges (rpm); a window's speed is drawn uniformly from one of them
    speed_rpm: tuple[tuple[float, float], ...]
    load: tuple[float, float] = (0.6, 1.0)
    sensor_noise_g: tuple[float, float] = (0.02, 0.05)


#: train/validation share speed ranges; the field set runs between them (unseen speeds), noisier and heavier
SPLITS: dict[str, SplitConfig] = {
    "train": SplitConfig(seed=11, per_class=500, speed_rpm=((1200, 1650), (2350, 3000))),
    "val": SplitConfig(seed=23, per_class=150, speed_rpm=((1200, 1650), (2350, 3000))),
    "field": SplitConfig(seed=37, per_class=150, speed_rpm=((1700, 2300),), load=(0.8, 1.2),
                         sensor_noise_g=(0.04, 0.08)),
}


class WindowParams(BaseModel):
    """Everything that determines one window (for reproducing or inspecting a sample)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: int = Field(ge=0, lt=len(CLASSES))
    speed_rpm: float = Field(gt=0)
    load: float = Field(gt=0)
    sensor_noise_g: float = Field(ge=0)
    fault_g: float = Field(default=0.3, ge=0, description="peak impact response at full load")
    unbalance: float = Field(default=0.025, ge=0, description="1× amplitude (g) at 30 Hz")
    resonance_hz: float = Field(default=2800.0, gt=0, lt=FS / 2)
    damping: float = Field(default=0.06, gt=0, lt=1)
    seed: int = 0


def _resonance_kernel(f_hz: float, zeta: float) -> np.ndarray:
    t = np.arange(_KERNEL) / FS
    wn = 2 * np.pi * f_hz
    return np.exp(-zeta * wn * t) * np.sin(wn * np.sqrt(1 - zeta * zeta) * t)


def _impact_times(rate_hz: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Sample indices where a rolling element meets the defect; ``rate_hz`` may vary per sample."""
    phase = np.cumsum(rate_hz) / FS + rng.uniform(0, 1)
    idx = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
    period = FS / np.maximum(rate_hz[idx], 1e-6)
    return idx + rng.normal(0, jitter, idx.size) * period


def synthesize(p: WindowParams, n: int = WINDOW, geometry: BearingGeometry | None = None) -> np.ndarray:
    """One vibration record (g, float32, ``n`` samples at :data:`FS`) for the parameters ``p``."""
    geometry = geometry or BearingGeometry()
    rng = np.random.default_rng(p.seed)
    pre = _KERNEL  # pre-roll so ring-downs that started before the window are present at its start
    total = n + pre
    t = np.arange(total) / FS
    f0 = p.speed_rpm / 60.0
    shaft_hz = f0 * (1 + 0.005 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t + rng.uniform(0, 2 * np.pi)))
    theta = 2 * np.pi * np.cumsum(shaft_hz) / FS + rng.uniform(0, 2 * np.pi)
    speed2 = (f0 / 30.0) ** 2

    x = p.unbalance * speed2 * np.sin(theta)
    x += rng.uniform(0.004, 0.012) * speed2 * np.sin(2 * theta + rng.uniform(0, 2 * np.pi))
    x += rng.uniform(0.002, 0.006) * speed2 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))

    kernel = _resonance_kernel(p.resonance_hz, p.damping)
    orders = {k: v / f0 for k, v in geometry.frequencies(f0).items()}  # defect frequency per shaft Hz
    rolling = rng.normal(0, 1, total) * 0.015 * p.load * np.sqrt(f0 / 30.0)
    label = CLASSES[p.label]
    impulses = np.zeros(total)
    if label in ("outer_race", "inner_race", "ball", "cage"):
        order = {"outer_race": orders["bpfo"], "inner_race": orders["bpfi"],
                 "ball": 2 * orders["bsf"], "cage": orders["ftf"]}[label]
        idx = _impact_times(order * shaft_hz, rng, jitter=rng.uniform(0.01, 0.02))
        keep = (idx >= 0) & (idx < total - 1)
        idx = idx[keep]
        i0 = np.floor(idx).astype(int)
        cage_angle = 2 * np.pi * np.cumsum(orders["ftf"] * shaft_hz) / FS + rng.uniform(0, 2 * np.pi)
        if label == "outer_race":  # the defect sits in the stationary load zone
            mod = np.ones(i0.size)
        elif label == "inner_race":  # the defect rotates with the shaft through the load zone (1×)
            mod = 0.25 + 0.75 * np.maximum(0.0, np.cos(theta[i0])) ** 1.5
        elif label == "ball":  # carried by the cage through the load zone; outer/inner race strikes alternate
            mod = (0.3 + 0.7 * np.maximum(0.0, np.cos(cage_angle[i0])) ** 1.5) * np.where(
                np.arange(i0.size) % 2 == 0, 1.0, 0.55)
        else:  # a broken cage pocket knocks once per cage revolution and makes the rolling noise uneven
            mod = np.full(i0.size, 1.6)
            rolling *= 1 + 0.8 * np.maximum(0.0, np.cos(cage_angle)) ** 2
        amp = p.fault_g * p.load * (0.6 + 0.4 * f0 / 30.0) * mod * rng.lognormal(0, 0.15, i0.size)
        frac = idx - i0  # spread each impact over its two neighbouring samples (sub-sample timing)
        np.add.at(impulses, i0, amp * (1 - frac))
        np.add.at(impulses, i0 + 1, amp * frac)
    x += np.convolve(impulses + rolling, kernel)[:total]
    x += rng.normal(0, p.sensor_noise_g, total)
    return x[pre:].astype(np.float32)


def _window_params(cfg: SplitConfig, label: int, i: int) -> WindowParams:
    rng = np.random.default_rng([cfg.seed, label, i])
    lo, hi = cfg.speed_rpm[int(rng.integers(len(cfg.speed_rpm)))]
    is_imbalance = CLASSES[label] == "imbalance"
    return WindowParams(
        label=label,
        speed_rpm=float(rng.uniform(lo, hi)),
        load=float(rng.uniform(*cfg.load)),
        sensor_noise_g=float(rng.uniform(*cfg.sensor_noise_g)),
        fault_g=float(rng.uniform(0.2, 0.7)),
        unbalance=float(rng.uniform(0.10, 0.30) if is_imbalance else rng.uniform(0.01, 0.04)),
        resonance_hz=float(rng.uniform(2300, 3400)),
        damping=float(rng.uniform(0.04, 0.09)),
        seed=int(rng.integers(2**63 - 1)),
    )


class Dataset(BaseModel):
    """Windows ``x`` [n, 1, WINDOW] (float32, g), labels ``y`` [n] (int64) and each window's shaft speed
    as the tachometer measured it (rpm, ± 0.2 %)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    x: np.ndarray
    y: np.ndarray
    speed_rpm: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def make_split(name: str | SplitConfig, per_class: int | None = None) -> Dataset:
    """Draw a split (``train``, ``val``, ``field`` or a custom :class:`SplitConfig`), classes interleaved.

    ``per_class`` overrides the split's size; the first ``k`` windows of each class are the same for any size.
    """
    if isinstance(name, str):
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        cfg = SPLITS[name]
    else:
        cfg = name
    n = cfg.per_class if per_class is None else per_class
    if n < 1:
        raise ValueError(f"per_class must be at least 1, got {n}")
    params = [_window_params(cfg, label, i) for i in range(n) for label in range(len(CLASSES))]
    x = np.stack([synthesize(p) for p in params])[:, None, :]
    tach = np.array([p.speed_rpm * (1 + 0.002 * np.random.default_rng(p.seed + 1).standard_normal())
                     for p in params])
    return Dataset(x=x, y=np.array([p.label for p in params], dtype=np.int64), speed_rpm=tach.astype(np.float32))


def _band_rms(spec_power: np.ndarray, freqs: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    sel = (freqs >= lo) & (freqs < hi) if hi < FS / 2 else (freqs >= lo)
    # Parseval for a one-sided spectrum: mean(x²) = (|X0|² + 2·Σ|Xk|² (+|X_nyq|²)) / n²
    return np.sqrt(2 * spec_power[..., sel].sum(axis=-1)) / n


def features(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-window condition indicators a device can compute cheaply and stream, each [n, 1] float32.

    ``rms`` (g), ``kurtosis`` (Pearson, 3 for Gaussian noise; impacts raise it), ``crest_factor``
    (peak / RMS), and the RMS in three bands (:data:`BANDS`): shaft harmonics, mid, resonance.
    """
    a = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n = a.shape[1]
    centered = a - a.mean(axis=1, keepdims=True)
    var = (centered**2).mean(axis=1)
    rms = np.sqrt((a**2).mean(axis=1))
    kurt = (centered**4).mean(axis=1) / np.maximum(var, 1e-12) ** 2
    crest = np.abs(a).max(axis=1) / np.maximum(rms, 1e-12)
    power = np.abs(np.fft.rfft(centered, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1 / FS)
    bands = [_band_rms(power, freqs, lo, hi, n) for lo, hi in BANDS]
    out = dict(zip(FEATURES, [rms, kurt, crest, *bands], strict=True))
    return {k: v.astype(np.float32)[:, None] for k, v in out.items()}


def _analytic_band(a: np.ndarray, band: Sequence[float]) -> np.ndarray:
    """Hilbert envelope of ``a`` [n, t] band-passed to ``band`` (Hz), mean removed."""
    spec = np.fft.fft(a, axis=-1)
    f = np.fft.fftfreq(a.shape[-1], 1 / FS)
    env = np.abs(np.fft.ifft(np.where((f >= band[0]) & (f <= band[1]), 2 * spec, 0), axis=-1))
    return env - env.mean(axis=-1, keepdims=True)


def _amplitude_at_orders(a: np.ndarray, speed_rpm: np.ndarray, pad: int = 4) -> np.ndarray:
    """Hann-windowed amplitude spectrum (g) of each row of ``a``, read at :data:`ORDERS` × its shaft speed."""
    n = a.shape[-1]
    win = np.hanning(n)
    mag = np.abs(np.fft.rfft(a * win, n=pad * n, axis=-1)) * 2 / win.sum()
    freqs = np.fft.rfftfreq(pad * n, 1 / FS)
    return np.stack([np.interp(ORDERS * s / 60.0, freqs, m) for m, s in zip(mag, speed_rpm, strict=True)])


def order_spectra(x: np.ndarray, speed_rpm: np.ndarray, band: Sequence[float] = (2000.0, 4000.0)) -> np.ndarray:
    """What the device feeds the model: [n, 2, len(ORDERS)] float32, log-compressed amplitudes in orders.

    Channel 0 is the envelope spectrum of the resonance band (where defect impacts show as lines at
    BPFO, BPFI, 2×BSF, FTF and their sidebands), channel 1 the plain spectrum (1×, 2×, 3× shaft
    harmonics: imbalance, misalignment). Reading both at multiples of the tachometer speed (order
    tracking) makes a defect's lines sit at the same place at any speed.
    """
    a = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    a = a - a.mean(axis=1, keepdims=True)
    speed = np.asarray(speed_rpm, dtype=np.float64).reshape(-1)
    if speed.shape[0] != a.shape[0] or not np.all(speed > 0):
        raise ValueError("speed_rpm needs one positive speed per window")
    env = _amplitude_at_orders(_analytic_band(a, band), speed)
    raw = _amplitude_at_orders(a, speed)
    return np.log1p(np.stack([env, raw], axis=1) / 1e-3).astype(np.float32)


def model_inputs(x: np.ndarray, speed_rpm: np.ndarray) -> dict[str, np.ndarray]:
    """The model's named inputs for windows ``x`` [n, 1, WINDOW] measured at ``speed_rpm``:
    ``spectrum`` (:func:`order_spectra`) plus one [n, 1] input per streamed feature (:func:`features`)."""
    return {"spectrum": order_spectra(x, speed_rpm), **features(x)}


def envelope_spectrum(x: np.ndarray, band: Sequence[float] = (2000.0, 4000.0)) -> tuple[np.ndarray, np.ndarray]:
    """Classic bearing diagnosis: band-pass around the resonance, take the Hilbert envelope, FFT it.

    Returns ``(freqs, magnitude)`` of the envelope; a defect shows as a peak at its characteristic frequency.
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    n = a.size
    spec = np.fft.fft(a)
    f = np.fft.fftfreq(n, 1 / FS)
    analytic = np.where((f >= band[0]) & (f <= band[1]), 2 * spec, 0)  # band-passed, positive side only
    env = np.abs(np.fft.ifft(analytic))
    env -= env.mean()
    mag = np.abs(np.fft.rfft(env * np.hanning(n)))
    return np.fft.rfftfreq(n, 1 / FS), mag


def compress_data(per_class_train: int | None = None, per_class_val: int | None = None):
    """``edgekit compress --data examples.predictive_maintenance.data:compress_data``: (train, val) dicts."""
    out = []
    for split, k in (("train", per_class_train), ("val", per_class_val)):
        ds = make_split(split, k)
        out.append({**model_inputs(ds.x, ds.speed_rpm), "y": ds.y})
    return tuple(out)
