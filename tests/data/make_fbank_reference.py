"""Write tests/data/fbank_reference.npz: Kaldi fbank features from implementations independent of ours.

The file pins bubogpt.audio_features.kaldi_fbank (torch) against:

1. kaldi-native-fbank (a C++ port of Kaldi's feature code, unrelated to torchaudio and to our
   torch code), full OnlineFbank pipeline, with the options ImageBind passes to
   torchaudio.compliance.kaldi.fbank: 16 kHz, 25 ms / 10 ms frames, no dither, Hann
   ("hanning") window, no energy; everything else at Kaldi's defaults (DC removal,
   pre-emphasis 0.97, 512-point FFT, power spectrum, mel 20 Hz..Nyquist, log).
   Kaldi refuses more than 126 mel bins at 16 kHz / 512-point FFT (the lowest triangles get
   narrower than one FFT bin and would be empty), so these use 126 and 80 bins.
2. For ImageBind's 128 bins (where torchaudio, unlike Kaldi, keeps the empty bins, which come out
   as log(float32 eps)), a float64 numpy transcription of the same Kaldi recipe below. The script
   first checks that this numpy pipeline reproduces kaldi-native-fbank at 126 and 80 bins.

Not needed by the test suite. To regenerate (from the repository root):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install kaldi-native-fbank numpy
    /tmp/refvenv/bin/python tests/data/make_fbank_reference.py

The signals are stored as float32 in the file (the test then does not depend on numpy's random
streams); RECIPES documents how they were made. Both implementations get the same float values
(no int16 scaling).
"""

from __future__ import annotations

import json
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np

SAMPLE_RATE = 16000
OUT = Path(__file__).with_name("fbank_reference.npz")
LOG_FLOOR = float(np.finfo(np.float32).eps)

RECIPES = {
    "tones": "1 s: 0.5 sin(2 pi 440 t) + 0.3 sin(2 pi 1000 t) + 0.01 N(0,1) noise (seed 0)",
    "chirp": "1.5 s: 0.5 sin(2 pi (100 t + 6900 t^2 / 3)) (linear 100 Hz -> 7 kHz) + 0.005 N(0,1) noise (seed 1)",
    "noise": "0.25 s: 0.1 N(0,1) white noise (seed 2) + 0.05 DC offset",
}
# knf mel-bin count used for each signal's kaldi-native-fbank reference
KNF_BINS = {"tones": 126, "chirp": 126, "noise": 80}


def make_signals() -> dict[str, np.ndarray]:
    t1 = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tones = 0.5 * np.sin(2 * np.pi * 440 * t1) + 0.3 * np.sin(2 * np.pi * 1000 * t1)
    tones += 0.01 * np.random.default_rng(0).standard_normal(t1.shape)

    dur = 1.5
    t2 = np.arange(int(dur * SAMPLE_RATE)) / SAMPLE_RATE
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t2 + (7000 - 100) * t2**2 / (2 * dur)))
    chirp += 0.005 * np.random.default_rng(1).standard_normal(t2.shape)

    noise = 0.1 * np.random.default_rng(2).standard_normal(SAMPLE_RATE // 4) + 0.05
    return {k: v.astype(np.float32) for k, v in {"tones": tones, "chirp": chirp, "noise": noise}.items()}


def knf_options(num_bins: int) -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.round_to_power_of_two = True
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = num_bins
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0  # 0 -> Nyquist
    opts.mel_opts.is_librosa = False  # Kaldi mel scale 1127 ln(1 + f/700), unnormalised triangles
    opts.use_energy = False
    opts.htk_compat = True
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def knf_fbank(signal: np.ndarray, num_bins: int) -> np.ndarray:
    fbank = knf.OnlineFbank(knf_options(num_bins))
    fbank.accept_waveform(SAMPLE_RATE, signal.tolist())
    fbank.input_finished()
    return np.stack([np.asarray(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)])


def numpy_fbank(signal: np.ndarray, num_bins: int) -> np.ndarray:
    """Kaldi's fbank recipe in float64 numpy (no bin-emptiness check, like torchaudio)."""
    size, shift, nfft = 400, 160, 512
    x = signal.astype(np.float64)
    n_frames = 1 + (len(x) - size) // shift
    frames = np.stack([x[i * shift : i * shift + size] for i in range(n_frames)])
    frames -= frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames *= 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))  # Kaldi "hanning"
    power = np.abs(np.fft.rfft(frames, n=nfft)) ** 2

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    lo, hi = mel(20.0), mel(SAMPLE_RATE / 2)
    delta = (hi - lo) / (num_bins + 1)
    fft_mel = mel(np.arange(nfft // 2) * SAMPLE_RATE / nfft)
    banks = np.zeros((num_bins, nfft // 2 + 1))
    for b in range(num_bins):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        rising = (fft_mel - left) / (center - left)
        falling = (right - fft_mel) / (right - center)
        banks[b, : nfft // 2] = np.clip(np.minimum(rising, falling), 0.0, None)
    return np.log(np.maximum(power @ banks.T, LOG_FLOOR))


def main() -> None:
    signals = make_signals()
    arrays: dict[str, np.ndarray] = {}
    for name, signal in signals.items():
        bins = KNF_BINS[name]
        ref = knf_fbank(signal, bins)
        mine = numpy_fbank(signal, bins)
        diff = np.abs(ref - mine).max()
        print(f"{name}: {signal.shape[0]} samples -> {ref.shape}; numpy vs kaldi-native-fbank max diff {diff:.2e}")
        assert diff < 1e-2, "the numpy transcription does not reproduce kaldi-native-fbank"
        full = numpy_fbank(signal, 128)
        print(f"  128 bins: {full.shape}, empty bins (log eps): {int((full == np.log(LOG_FLOOR)).all(axis=0).sum())}")
        arrays[f"{name}_signal"] = signal
        arrays[f"{name}_knf{bins}"] = ref.astype(np.float32)
        arrays[f"{name}_numpy128"] = full.astype(np.float32)
    meta = {
        "generator": f"kaldi-native-fbank {getattr(knf, '__version__', '')}".strip() + " + numpy float64 (128 bins)",
        "knf_options": {name: str(knf_options(b)) for name, b in KNF_BINS.items()},
        "knf_bins": KNF_BINS,
        "sample_rate": SAMPLE_RATE,
        "recipes": RECIPES,
    }
    np.savez_compressed(OUT, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
