"""Write tests/data/fbank_reference.npz: Kaldi fbank features from an independent implementation.

The features pin bubogpt.audio_features.kaldi_fbank. They come from kaldi-native-fbank (a C++
port of Kaldi's feature code, unrelated to torchaudio and to our torch code), with the options
ImageBind passes to torchaudio.compliance.kaldi.fbank: 16 kHz, 25 ms / 10 ms frames, 128 mel
bins, no dither, Hann ("hanning") window, no energy; everything else at Kaldi's defaults.

Not needed by the test suite. To regenerate (from the repository root):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install kaldi-native-fbank numpy
    /tmp/refvenv/bin/python tests/data/make_fbank_reference.py

The signals are stored in the file as float32 (so the test does not depend on numpy's random
streams staying the same); RECIPES below documents how they were made.
"""

from __future__ import annotations

import json
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np

SAMPLE_RATE = 16000
OUT = Path(__file__).with_name("fbank_reference.npz")

RECIPES = {
    "tones": "1 s: 0.5 sin(2 pi 440 t) + 0.3 sin(2 pi 1000 t) + 0.01 N(0,1) noise (seed 0)",
    "chirp": "1.5 s: 0.5 sin(2 pi (100 t + (7000-100) t^2 / (2 * 1.5))) (linear 100 Hz -> 7 kHz) + 0.005 N(0,1) (seed 1)",
    "noise": "0.25 s: 0.1 N(0,1) white noise (seed 2) plus a 0.05 DC offset",
}


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


def fbank_options() -> knf.FbankOptions:
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
    opts.mel_opts.num_bins = 128
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0  # 0 -> Nyquist
    opts.mel_opts.is_librosa = False  # Kaldi mel scale 1127 ln(1 + f/700), unnormalised triangles
    opts.use_energy = False
    opts.htk_compat = True
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def kaldi_features(signal: np.ndarray) -> np.ndarray:
    fbank = knf.OnlineFbank(fbank_options())
    # the same float values our torch code sees (no int16 scaling)
    fbank.accept_waveform(SAMPLE_RATE, signal.tolist())
    fbank.input_finished()
    return np.stack([np.asarray(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)]).astype(np.float32)


def main() -> None:
    signals = make_signals()
    arrays: dict[str, np.ndarray] = {}
    for name, signal in signals.items():
        feats = kaldi_features(signal)
        print(f"{name}: {signal.shape[0]} samples -> fbank {feats.shape}, range [{feats.min():.2f}, {feats.max():.2f}]")
        arrays[f"{name}_signal"] = signal
        arrays[f"{name}_fbank"] = feats
    meta = {
        "generator": f"kaldi-native-fbank {getattr(knf, '__version__', '?')}",
        "options": str(fbank_options()),
        "sample_rate": SAMPLE_RATE,
        "recipes": RECIPES,
    }
    np.savez_compressed(OUT, meta=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
