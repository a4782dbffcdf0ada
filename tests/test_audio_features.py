"""Audio front end (bubogpt.audio_features): decoding, resampling, Kaldi fbank, clip sampling."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bubogpt.audio_features import (
    AudioDecodeError,
    audio_bytes_to_clips,
    clip_bounds,
    decode_audio,
    kaldi_fbank,
    resample,
    waveform_to_clips,
)
from bubogpt.config import AudioEncoderConfig

CFG = AudioEncoderConfig()
REFERENCE = Path(__file__).parent / "data" / "fbank_reference.npz"
LOG_EPS = math.log(torch.finfo(torch.float32).eps)


def _wav_bytes(samples: np.ndarray, sample_rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _test_signal(seconds: float, sample_rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Two tones plus noise, amplitude < 1, shape [N] or [N, channels]."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    cols = [
        0.4 * np.sin(2 * np.pi * (300 + 200 * c) * t) + 0.2 * np.sin(2 * np.pi * 2500 * t * (1 + t / 20))
        + 0.05 * rng.standard_normal(t.shape)
        for c in range(channels)
    ]
    x = np.stack(cols, axis=1) if channels > 1 else cols[0]
    return x.astype(np.float32)


# --------------------------------------------------------------------------------------
# fbank against independent references


def _reference():
    data = np.load(REFERENCE)
    return data, json.loads(str(data["meta"]))


@pytest.mark.parametrize("name", ["tones", "chirp", "noise"])
def test_fbank_matches_kaldi_native_fbank(name):
    data, meta = _reference()
    bins = meta["knf_bins"][name]
    signal = torch.from_numpy(data[f"{name}_signal"])
    for key, num_bins in ((f"{name}_knf{bins}", bins), (f"{name}_numpy128", 128)):
        ref = data[key]
        ours = kaldi_fbank(signal, num_mel_bins=num_bins).numpy()
        assert ours.shape == ref.shape == (1 + (signal.shape[0] - 400) // 160, num_bins)
        diff = np.abs(ours - ref)
        # Bins far below the frame's strongest one (< e^-10 of its energy) are at the limit of
        # float32 precision in every implementation (the C++ reference included): looser bound.
        well_conditioned = ref > ref.max(axis=1, keepdims=True) - 10.0
        assert diff[well_conditioned].max() < 1e-3, (key, diff[well_conditioned].max())
        assert diff.max() < 1e-2, (key, diff.max())


@pytest.mark.parametrize("name", ["tones", "chirp", "noise"])
def test_fbank_float64_matches_reference_recipe_tightly(name):
    # In float64 there is no precision floor: the algorithm itself must agree to ~1e-6.
    data, _ = _reference()
    ours = kaldi_fbank(torch.from_numpy(data[f"{name}_signal"]).double()).numpy()
    np.testing.assert_allclose(ours, data[f"{name}_numpy128"], atol=1e-5, rtol=0)


def test_fbank_frame_count_and_empty_mel_bin():
    assert kaldi_fbank(torch.zeros(399)).shape == (0, 128)
    assert kaldi_fbank(torch.zeros(400)).shape == (1, 128)
    # a 5 s clip has 498 frames (so clips are always resized to 204, never cut)
    feats = kaldi_fbank(torch.from_numpy(_test_signal(5.0, 16000)))
    assert feats.shape == (498, 128)
    # With 128 bins the lowest triangle between two FFT bins holds none: torchaudio keeps it,
    # so it is log(eps) in every frame; silence is log(eps) everywhere.
    empty = np.flatnonzero((feats == LOG_EPS).all(dim=0).numpy())
    assert empty.tolist() == [3]
    assert torch.all(kaldi_fbank(torch.zeros(1000)) == LOG_EPS)


class _Fbank(torch.nn.Module):
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return kaldi_fbank(waveform)


def test_fbank_exports_with_fixed_length():
    x, y = torch.randn(80000), torch.randn(80000)
    exported = torch.export.export(_Fbank(), (x,)).module()
    torch.testing.assert_close(exported(y), kaldi_fbank(y), atol=1e-5, rtol=0)
    # nothing traced leaks into later eager calls (e.g. cached fake tensors)
    assert type(kaldi_fbank(y)) is torch.Tensor


# --------------------------------------------------------------------------------------
# resampling


def _direct_resample(x: np.ndarray, orig_sr: int, new_sr: int, out_indices) -> np.ndarray:
    """torchaudio's sinc_interp_hann formula evaluated directly in float64, sample by sample."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    base = min(orig, new) * 0.99
    i = np.arange(len(x))
    out = []
    for j in out_indices:
        t = np.clip(base * (i / orig - j / new), -6, 6)
        window = np.cos(t * np.pi / 12) ** 2
        out.append(np.sum(x * np.sinc(t) * window) * base / orig)
    return np.array(out)


@pytest.mark.parametrize(
    "n,orig_sr,new_sr",
    [(44100, 44100, 16000), (12345, 44100, 16000), (7, 48000, 16000), (1001, 8000, 16000), (999, 22050, 16000), (5, 16000, 44100)],
)
def test_resample_length_is_ceil(n, orig_sr, new_sr):
    out = resample(torch.zeros(n), orig_sr, new_sr)
    assert out.shape == (-(-n * new_sr // orig_sr),)


@pytest.mark.parametrize("orig_sr", [44100, 48000, 8000, 11025])
def test_resample_matches_direct_sinc_formula(orig_sr):
    x = _test_signal(0.05, orig_sr)
    out = resample(torch.from_numpy(x), orig_sr, 16000).numpy()
    idx = [0, 1, 2, 3, 100, 401, len(out) - 2, len(out) - 1]
    # the taps are computed in float32 (as torchaudio does): agreement to ~1e-6
    np.testing.assert_allclose(out[idx], _direct_resample(x.astype(np.float64), orig_sr, 16000, idx), atol=1e-5)


def test_resample_keeps_frequency_and_amplitude():
    t = np.arange(44100) / 44100
    sine = torch.from_numpy(np.sin(2 * np.pi * 1000 * t).astype(np.float32))
    out = resample(sine, 44100, 16000)
    assert out.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(out.numpy()))
    assert np.argmax(spectrum) == 1000  # 1 s at 16 kHz -> 1 Hz per FFT bin
    interior = out[200:-200]  # away from the zero-padded edges
    assert abs(interior.abs().max().item() - 1.0) < 5e-3
    expected = torch.sin(2 * math.pi * 1000 * torch.arange(16000, dtype=torch.float64) / 16000).float()
    assert (out - expected)[200:-200].abs().max() < 5e-3


def test_resample_identity_and_channels():
    x = torch.randn(2, 3000)
    assert resample(x, 16000, 16000) is x
    both = resample(x, 48000, 16000)
    assert both.shape == (2, 1000)
    torch.testing.assert_close(both[1], resample(x[1], 48000, 16000))


def test_resample_refuses_coprime_rates():
    with pytest.raises(ValueError, match="common divisor"):
        resample(torch.zeros(10), 44101, 16000)


# --------------------------------------------------------------------------------------
# clip sampling


def test_clip_bounds():
    # 12 s: starts every 7/5 s = 22400 samples
    assert clip_bounds(12 * 16000, CFG) == [(s, s + 80000) for s in range(0, 112001, 22400)]
    # exactly 5 s (and anything tiled up to it): six copies of the whole
    assert clip_bounds(80000, CFG) == [(0, 80000)] * 6
    # float durations are used as pytorchvideo does (Fraction of the float), so bounds can fall
    # one sample short of the end
    assert clip_bounds(100001, CFG) == [
        (0, 80000), (4000, 84000), (8000, 88000), (12000, 92000), (16000, 96000), (20001, 100001)
    ]
    assert clip_bounds(123457, CFG)[-1] == (43456, 123456)


def test_short_audio_is_tiled_to_one_clip():
    x = _test_signal(2.0, 16000)
    clips = waveform_to_clips(x, 16000, CFG)
    assert clips.shape == (7, 1, 128, 204)
    tiled = np.concatenate([x, x, x])[:80000]
    expected = _melspec_by_hand(torch.from_numpy(tiled))
    for clip in clips:  # all six clips and the global one are the same 5 s
        torch.testing.assert_close(clip, expected, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------
# the whole path


def _bilinear_time_resize(spec: np.ndarray, width: int) -> np.ndarray:
    """Half-pixel-centre linear interpolation along time (align_corners=False, no antialias)."""
    n = spec.shape[1]
    src = np.maximum((np.arange(width) + 0.5) * n / width - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = src - lo
    return spec[:, lo] * (1 - w) + spec[:, hi] * w


def _melspec_by_hand(clip: torch.Tensor) -> torch.Tensor:
    fb = kaldi_fbank(clip - clip.mean()).numpy().T  # [128, frames]
    if fb.shape[1] > 204:
        fb = _bilinear_time_resize(fb.astype(np.float64), 204)
    else:
        fb = np.pad(fb, ((0, 0), (0, 204 - fb.shape[1])))
    return torch.from_numpy(((fb - CFG.fbank_mean) / CFG.fbank_std).astype(np.float32))[None]


def _clips_by_hand(mono: np.ndarray, sample_rate: int) -> torch.Tensor:
    wav = resample(torch.from_numpy(mono), sample_rate, 16000)
    clips = [wav[s:e] for s, e in clip_bounds(wav.shape[0], CFG)] + [wav]
    return torch.stack([_melspec_by_hand(c) for c in clips])


def test_int16_stereo_44k_wav():
    stereo = _test_signal(7.3, 44100, channels=2)
    pcm = np.round(stereo * 32767).astype(np.int16)
    clips = audio_bytes_to_clips(_wav_bytes(pcm, 44100, subtype="PCM_16"), CFG)
    assert clips.shape == (7, 1, 128, 204) and clips.dtype == torch.float32
    mono = (pcm.astype(np.float32) / 32768).mean(axis=1)
    torch.testing.assert_close(clips, _clips_by_hand(mono, 44100), atol=1e-4, rtol=0)
    assert not torch.equal(clips[0], clips[5])  # the clips really are different windows


def test_float_mono_16k_wav():
    x = _test_signal(12.0, 16000)
    data = _wav_bytes(x, 16000, subtype="FLOAT")
    samples, sr = decode_audio(data)
    assert sr == 16000 and np.array_equal(samples, x)
    clips = audio_bytes_to_clips(data, CFG)
    expected = _clips_by_hand(x, 16000)
    torch.testing.assert_close(clips, expected, atol=1e-4, rtol=0)
    # global clip = the whole 12 s waveform (1198 frames squeezed to 204)
    torch.testing.assert_close(clips[-1], _melspec_by_hand(torch.from_numpy(x)), atol=1e-4, rtol=0)
    # each clip is computed on its own: the shared waveform is not modified in place
    for (s, e), clip in zip(clip_bounds(len(x), CFG), clips[:6]):
        torch.testing.assert_close(waveform_to_clips(x[s:e], 16000, CFG)[0], clip, atol=1e-4, rtol=0)


def test_without_global_clip_and_padding_branch():
    cfg = AudioEncoderConfig(clip_seconds=1.0, use_global_clip=False)
    clips = waveform_to_clips(_test_signal(1.0, 16000), 16000, cfg)
    assert clips.shape == (6, 1, 128, 204)
    # a 1 s clip has 98 frames: zero-padded (before normalisation) up to 204
    pad_value = (0 - cfg.fbank_mean) / cfg.fbank_std
    torch.testing.assert_close(clips[..., 98:], torch.full_like(clips[..., 98:], pad_value))
    assert (clips[..., 97] - pad_value).abs().max() > 1.0  # the last real frame is not padding


def test_flac_and_ogg_decode():
    x = _test_signal(1.5, 22050, channels=2)
    pcm = np.round(x * 32767).astype(np.int16)
    samples, sr = decode_audio(_wav_bytes(pcm, 22050, fmt="FLAC", subtype="PCM_16"))
    assert sr == 22050
    np.testing.assert_array_equal(samples, (pcm.astype(np.float32) / 32768).mean(axis=1))

    samples, sr = decode_audio(_wav_bytes(x, 22050, fmt="OGG", subtype="VORBIS"))
    assert sr == 22050 and samples.shape == (x.shape[0],) and samples.dtype == np.float32
    assert np.corrcoef(samples, x.mean(axis=1))[0, 1] > 0.99  # lossy, but the same sound
    clips = audio_bytes_to_clips(_wav_bytes(x, 22050, fmt="OGG", subtype="VORBIS"), CFG)
    assert clips.shape == (7, 1, 128, 204) and torch.isfinite(clips).all()


# --------------------------------------------------------------------------------------
# errors


def test_decode_errors():
    good = _wav_bytes(np.round(_test_signal(1.0, 16000) * 32767).astype(np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(b"")
    with pytest.raises(AudioDecodeError, match="not a recognised audio file"):
        decode_audio(np.random.default_rng(0).bytes(2000))
    with pytest.raises(AudioDecodeError, match="not a recognised audio file"):
        decode_audio(good[:20])  # cut inside the header
    with pytest.raises(AudioDecodeError, match="no samples"):
        decode_audio(good[:44])  # header only
    with pytest.raises(AudioDecodeError, match="too long: 1.0 s, the limit is 0.5 s"):
        decode_audio(good, max_seconds=0.5)
    nan = _test_signal(1.0, 16000)
    nan[100] = np.nan
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_audio(_wav_bytes(nan, 16000, subtype="FLOAT"))
    flac = _wav_bytes(np.round(_test_signal(1.0, 16000) * 32767).astype(np.int16), 16000, fmt="FLAC")
    with pytest.raises(AudioDecodeError, match="corrupt or truncated"):
        decode_audio(flac[: len(flac) // 2])
    assert issubclass(AudioDecodeError, ValueError)


def test_wav_cut_in_the_middle_decodes_what_is_there():
    x = np.round(_test_signal(1.0, 16000) * 32767).astype(np.int16)
    data = _wav_bytes(x, 16000, subtype="PCM_16")
    samples, _ = decode_audio(data[: 44 + 2 * 6000])
    np.testing.assert_array_equal(samples, x[:6000].astype(np.float32) / 32768)


def test_audio_bytes_to_clips_limits():
    long = _wav_bytes(np.zeros(16000 * 3, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioDecodeError, match="too long"):
        audio_bytes_to_clips(long, CFG, max_seconds=2.0)
    odd_rate = _wav_bytes(np.zeros(44101, dtype=np.int16), 44101, subtype="PCM_16")
    with pytest.raises(AudioDecodeError, match="unsupported sample rate 44101 Hz"):
        audio_bytes_to_clips(odd_rate, CFG)
    # silence is valid audio: every fbank value is log(eps), normalised
    clips = audio_bytes_to_clips(long, CFG)
    assert torch.allclose(clips, torch.full_like(clips, (LOG_EPS - CFG.fbank_mean) / CFG.fbank_std))
