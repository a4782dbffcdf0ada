"""Audio front end: encoded audio bytes -> normalised Kaldi fbank clips for the ImageBind audio trunk.

Reproduces BuboGPT's evaluation audio processor (ImageBind's ``waveform2melspec`` plus
pytorchvideo's constant clip sampler) without torchaudio or torchvision, which cannot be
imported beside the CPU torch:

    bytes --soundfile--> mono float32 --windowed-sinc--> 16 kHz --tile to >= 5 s-->
    6 evenly spaced 5 s clips (+ the whole waveform as a "global" clip) -->
    per clip: subtract mean, Kaldi fbank (128 mel, 25 ms / 10 ms) -> [128, frames]
    -> pad or bilinear-resize to [128, 204] -> (x - mean) / std

Output: float32 ``[num_clips, 1, num_mel_bins, target_frames]``.

The global clip follows ``cfg.use_global_clip``. BuboGPT trained its audio Q-Former with it
(``use_global: True`` in the stage configs), but its eval processor's ``from_config`` drops the
option, so the official demo/eval fed 6 clips, not 7.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from bubogpt.config import AudioEncoderConfig

log = logging.getLogger(__name__)

# Kaldi's log floor: torch.finfo(float32).eps, as torchaudio.compliance.kaldi uses.
_LOG_FLOOR = float(torch.finfo(torch.float32).eps)
_PREEMPHASIS = 0.97
_LOW_FREQ_HZ = 20.0
# A polyphase filter bank is (new/g) x (2*width + orig/g) taps for g = gcd(orig, new).
# Common rates give < 1M taps (44.1 kHz -> 16 kHz: 76k); coprime rates such as 44101 Hz
# would need ~700M (gigabytes), so they are refused instead of exhausting memory.
MAX_RESAMPLE_KERNEL_TAPS = 1 << 24


class AudioDecodeError(ValueError):
    """The audio bytes cannot be turned into a waveform (bad format, corrupt, too long...)."""


# --------------------------------------------------------------------------------------
# decoding


def decode_audio(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode WAV/FLAC/OGG/... bytes into (mono float32 samples in [-1, 1], sample rate)."""
    if not data:
        raise AudioDecodeError("audio is empty (0 bytes)")
    try:
        handle = sf.SoundFile(io.BytesIO(data))
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as err:
        # libsndfile's own message is often misleading for byte streams ("File does not exist")
        raise AudioDecodeError(
            f"not a recognised audio file ({len(data)} bytes; supported formats: "
            f"{', '.join(sorted(sf.available_formats()))}): {err}"
        ) from err

    with handle:
        sample_rate = int(handle.samplerate)
        declared_frames = int(handle.frames)
        if sample_rate <= 0:
            raise AudioDecodeError(f"audio header has an invalid sample rate ({sample_rate} Hz)")
        # Check the declared length before decoding, so a huge file is refused cheaply.
        if max_seconds is not None and declared_frames / sample_rate > max_seconds:
            raise AudioDecodeError(
                f"audio is too long: {declared_frames / sample_rate:.1f} s, the limit is {max_seconds:g} s"
            )
        try:
            # dtype float32 maps integer PCM to [-1, 1) (int16 / 32768); [frames, channels]
            samples = handle.read(dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, ValueError, MemoryError) as err:
            raise AudioDecodeError(f"audio file is corrupt or truncated ({handle.format}): {err}") from err
        fmt = f"{handle.format}/{handle.subtype}"

    if samples.shape[0] == 0:
        raise AudioDecodeError(f"audio contains no samples ({fmt}; empty, or truncated after its header)")
    if samples.shape[0] < declared_frames:
        # libsndfile returns what it could decode; a cut-off upload still carries usable audio.
        log.warning(
            "audio decoded partially (%s): %d of %d declared frames; the file looks truncated",
            fmt,
            samples.shape[0],
            declared_frames,
        )
    if not np.isfinite(samples).all():
        raise AudioDecodeError(f"audio contains NaN or infinite samples ({fmt})")
    if max_seconds is not None and samples.shape[0] / sample_rate > max_seconds:
        raise AudioDecodeError(
            f"audio is too long: {samples.shape[0] / sample_rate:.1f} s, the limit is {max_seconds:g} s"
        )

    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), sample_rate


# --------------------------------------------------------------------------------------
# resampling (torchaudio.functional.resample defaults: sinc_interp_hann, width 6, rolloff 0.99)


def resample_kernel_taps(orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> int:
    """Number of filter taps the polyphase resampler needs (its memory is 4 bytes per tap)."""
    if orig_sr == new_sr:
        return 0
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    width = math.ceil(lowpass_filter_width * orig / (min(orig, new) * rolloff))
    return new * (2 * width + orig)


def _sinc_kernel(orig: int, new: int, dtype: torch.dtype, lowpass_filter_width: int = 6, rolloff: float = 0.99):
    """Polyphase windowed-sinc filter bank [new, 1, 2*width + orig] for reduced rates orig -> new.

    Output phase j (time j/new) weights input samples at times i/orig with
    sinc(pi * base * (i/orig - j/new)) * hann window, base = min(orig, new) * rolloff being
    the anti-aliasing cut-off. Built per call (cheap) in the waveform's dtype with the same
    operations as torchaudio, so the taps match it.
    """
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    input_times = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + input_times
    t = (t * base).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype), t.sin() / t)
    return sinc * window * (base / orig), width


def resample(waveform: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling of a 1-D or [C, N] float waveform; output length ceil(N * new / orig)."""
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} -> {new_sr}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr == new_sr:
        return waveform
    if not waveform.is_floating_point():
        raise TypeError(f"resample needs a floating point waveform, got {waveform.dtype}")
    taps = resample_kernel_taps(orig_sr, new_sr)
    if taps > MAX_RESAMPLE_KERNEL_TAPS:
        raise ValueError(
            f"cannot resample {orig_sr} Hz -> {new_sr} Hz: the rates share too small a common divisor "
            f"({taps} filter taps, limit {MAX_RESAMPLE_KERNEL_TAPS})"
        )
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = _sinc_kernel(orig, new, waveform.dtype)
    kernel = kernel.to(waveform.device)

    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    length = flat.shape[-1]
    # Each stride-`orig` step of the conv emits `new` output samples (one per filter phase).
    padded = F.pad(flat, (width, width + orig))
    out = F.conv1d(padded[:, None], kernel, stride=orig)  # [B, new, steps]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target_length = -(-new * length // orig)  # integer ceil
    return out[:, :target_length].reshape(*shape[:-1], -1)


# --------------------------------------------------------------------------------------
# Kaldi fbank (torchaudio.compliance.kaldi.fbank with ImageBind's arguments)


# The constant matrix below is cached as a numpy array, never as a tensor: a tensor created
# while torch.export traces (a FakeTensor) must not leak into later eager calls.


def _mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)  # Kaldi's mel scale


@functools.lru_cache(maxsize=8)
def _mel_banks(num_bins: int, fft_size: int, sample_rate: int) -> np.ndarray:
    """[fft_size // 2 + 1, num_bins] Kaldi triangular filters (equal width in mel, 20 Hz..Nyquist).

    The Nyquist row stays zero, as in Kaldi. Unlike Kaldi, but like torchaudio, bins too narrow
    to contain an FFT bin are kept (all-zero: 128 bins at 16 kHz have one, giving log(eps)).
    """
    mel_low, mel_high = _mel(_LOW_FREQ_HZ), _mel(0.5 * sample_rate)  # high_freq 0 -> Nyquist
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = np.arange(num_bins)[None, :]
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    bin_mel = _mel(np.arange(fft_size // 2) * (sample_rate / fft_size))[:, None]
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    weights = np.maximum(np.minimum(up, down), 0.0)
    return np.concatenate([weights, np.zeros((1, num_bins))], axis=0)


def _constant(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(array).to(dtype=like.dtype, device=like.device)


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> torch.Tensor:
    """Log mel filterbank [frames, num_mel_bins] of a mono waveform (1-D or [1, N]).

    Kaldi defaults otherwise: snip_edges (only whole frames), no dither, per-frame DC removal,
    pre-emphasis 0.97, symmetric Hann ("hanning") window, FFT size rounded up to a power of
    two, power spectrum, mel bins from 20 Hz to Nyquist, log floored at float32 eps.
    Energy/htk_compat do not matter since the energy term is not used.
    """
    if waveform.dim() == 2 and waveform.shape[0] == 1:
        waveform = waveform[0]
    if waveform.dim() != 1:
        raise ValueError(f"kaldi_fbank expects a mono waveform (1-D or [1, N]), got shape {tuple(waveform.shape)}")
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    fft_size = 1 << (window_size - 1).bit_length()
    if waveform.shape[0] < window_size:
        return waveform.new_zeros((0, num_mel_bins))

    frames = waveform.unfold(0, window_size, window_shift)  # [num_frames, window_size]
    frames = frames - frames.mean(dim=1, keepdim=True)
    # pre-emphasis; Kaldi reuses each frame's first sample as its own predecessor
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - _PREEMPHASIS * previous
    window = torch.hann_window(window_size, periodic=False, dtype=waveform.dtype, device=waveform.device)
    frames = frames * window

    # An FFT, not a DFT matmul: the matmul (window x (fft_size + 2) multiply-adds per frame) was a third
    # of an audio request's CPU in Triton (benchmarks/README.md, "Hot path"); the zero padding to
    # fft_size is rfft's `n`.
    spectrum = torch.fft.rfft(frames, n=fft_size, dim=1)
    power = spectrum.real.square() + spectrum.imag.square()  # [num_frames, fft_size // 2 + 1]
    mel_energies = power @ _constant(_mel_banks(num_mel_bins, fft_size, sample_rate), power)
    return mel_energies.clamp_min(_LOG_FLOOR).log()


# --------------------------------------------------------------------------------------
# clips


def clip_bounds(num_samples: int, cfg: AudioEncoderConfig) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of the evenly spaced clips (pytorchvideo ConstantClipsPerVideoSampler).

    Clip i starts at i * max(duration - clip, 0) / max(clips - 1, 1) seconds. The arithmetic is
    exact (Fraction), like pytorchvideo's, so the integer bounds match it.
    """
    sr = cfg.sample_rate
    clip = Fraction(cfg.clip_seconds)
    max_start = Fraction(max(num_samples / sr - float(clip), 0))
    step = max_start / max(cfg.clips_per_audio - 1, 1)
    bounds = []
    for i in range(cfg.clips_per_audio):
        start = step * i
        bounds.append((int(start * sr), int((start + clip) * sr)))
    return bounds


def _melspec(clip: torch.Tensor, cfg: AudioEncoderConfig) -> torch.Tensor:
    """One clip -> [1, num_mel_bins, target_frames] (before normalisation)."""
    # Out of place on purpose: the original subtracts in place through a view of the shared
    # waveform, so overlapping later clips (and the global clip) see earlier clips' means
    # (an accident; it moves normalised values by up to ~1e-2). We do not reproduce it.
    clip = clip - clip.mean()
    spec = kaldi_fbank(clip, cfg.sample_rate, cfg.num_mel_bins).T[None]  # [1, mel, frames]
    frames = spec.shape[-1]
    if frames < cfg.target_frames:
        return F.pad(spec, (0, cfg.target_frames - frames))
    if frames > cfg.target_frames:
        # Longer clips are squeezed, not cut (torchvision Resize on a tensor: bilinear, no antialias)
        spec = F.interpolate(
            spec[None], size=(cfg.num_mel_bins, cfg.target_frames), mode="bilinear", align_corners=False
        )[0]
    return spec


def waveform_to_clips(waveform: np.ndarray | torch.Tensor, sample_rate: int, cfg: AudioEncoderConfig) -> torch.Tensor:
    """Mono waveform (1-D, or [C, N] averaged to mono) -> normalised fbank clips [num_clips, 1, mel, frames]."""
    wav = torch.as_tensor(waveform).to(torch.float32)
    if wav.dim() == 2:
        wav = wav.mean(dim=0)
    if wav.dim() != 1 or wav.shape[0] == 0:
        raise ValueError(f"expected a non-empty 1-D or [C, N] waveform, got shape {tuple(wav.shape)}")
    wav = resample(wav, sample_rate, cfg.sample_rate)

    clip_samples = round(cfg.clip_seconds * cfg.sample_rate)
    if wav.shape[0] < clip_samples:
        # short audio is looped to exactly one clip length
        wav = wav.repeat(-(-clip_samples // wav.shape[0]))[:clip_samples]

    clips = [wav[start:end] for start, end in clip_bounds(wav.shape[0], cfg)]
    if cfg.use_global_clip:
        clips.append(wav)
    specs = torch.stack([_melspec(clip, cfg) for clip in clips])
    return (specs - cfg.fbank_mean) / cfg.fbank_std


def audio_bytes_to_clips(data: bytes, cfg: AudioEncoderConfig, max_seconds: float | None = 600.0) -> torch.Tensor:
    """Encoded audio bytes -> normalised fbank clips [num_clips, 1, num_mel_bins, target_frames]."""
    samples, sample_rate = decode_audio(data, max_seconds=max_seconds)
    taps = resample_kernel_taps(sample_rate, cfg.sample_rate)
    if taps > MAX_RESAMPLE_KERNEL_TAPS:
        raise AudioDecodeError(
            f"unsupported sample rate {sample_rate} Hz: resampling it to {cfg.sample_rate} Hz would need "
            f"{taps} filter taps; use a common rate (8/11.025/16/22.05/24/32/44.1/48/96 kHz)"
        )
    log.debug("decoded audio: %d samples at %d Hz", samples.shape[0], sample_rate)
    return waveform_to_clips(samples, sample_rate, cfg)
