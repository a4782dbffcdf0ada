import pytest

from bubogpt.samples import make_audio_bytes, make_image_bytes

__all__ = ["make_audio_bytes", "make_image_bytes"]


@pytest.fixture(scope="session")
def image_bytes() -> bytes:
    return make_image_bytes()


@pytest.fixture(scope="session")
def audio_bytes() -> bytes:
    return make_audio_bytes()
