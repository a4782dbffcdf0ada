"""The web page in a real browser (headless Chromium driven by Playwright) against the real stack: a
held-out world picture and a sound in, the answer streams in, and the grounded masks are drawn on the
canvas in their phrases' colours."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import part_down
from serving.client import chat_request, collect
from training.world import derive_seed
from training.world.scene import make_scene
from training.world.sound import make_sound

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="no Chromium (Debian's `chromium` package; scripts/setup.sh installs it where apt-get can)")
QUESTION = "What objects are in the image?"
# the flags a headless Chromium needs here: root (no sandbox), no GPU, no network of its own
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

# of the first entity's box: canvas pixels that moved towards its colour when the masks were drawn
MASK_PIXELS = """() => {
  const state = window.bubo.state, canvas = document.getElementById("canvas"), ctx = canvas.getContext("2d");
  const entity = state.entities[0], s = state.scale;
  const [x0, y0, x1, y1] = entity.box.map((v) => Math.round(v * s));
  const w = Math.max(1, x1 - x0), h = Math.max(1, y1 - y0);
  const withMasks = ctx.getImageData(x0, y0, w, h).data;
  const saved = state.entities;
  state.entities = [];
  window.bubo.redraw();
  const without = ctx.getImageData(x0, y0, w, h).data;
  state.entities = saved;
  window.bubo.redraw();
  const color = [1, 3, 5].map((i) => parseInt(entity.color.slice(i, i + 2), 16));
  let count = 0;
  for (let i = 0; i < withMasks.length; i += 4) {
    let towards = 0, moved = 0;
    for (let c = 0; c < 3; c++) {
      const change = withMasks[i + c] - without[i + c];
      moved += Math.abs(change);
      towards += change * (color[c] - without[i + c]);
    }
    if (moved > 12 && towards > 0) count++;
  }
  return count;
}"""


@pytest.fixture(scope="module")
def picture(stub):
    """A held-out world picture whose grounded answer names something."""
    for i in range(20):
        image = make_scene(derive_seed("web-test", "image", i)).jpeg()
        result = collect(stub.Chat(chat_request(QUESTION, image, ground=True, max_new_tokens=96), timeout=120))
        if result.entities:
            return image
    pytest.fail("none of 20 held-out pictures got a grounded entity")


def test_the_page_streams_the_answer_and_draws_the_masks(stack, stub, picture, tmp_path):
    from playwright.sync_api import sync_playwright

    sound = make_sound(derive_seed("web-test", "sound", 0), "bell").wav()
    image_path, sound_path = tmp_path / "picture.jpg", tmp_path / "bell.wav"
    image_path.write_bytes(picture)
    sound_path.write_bytes(sound)
    want = collect(stub.Chat(chat_request(QUESTION, picture, sound, ground=True, max_new_tokens=96), timeout=120))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 720})
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"http://127.0.0.1:{stack.http_port}/")
            page.wait_for_function("window.bubo.state.model !== null")
            assert page.locator("#sample-images img").count() >= 4  # the world's sample pictures are offered
            page.set_input_files("#image-file", str(image_path))
            page.wait_for_function("window.bubo.state.image !== null")
            page.set_input_files("#audio-file", str(sound_path))
            page.wait_for_function("window.bubo.state.audio !== null")
            assert page.locator("#player").is_visible()
            page.fill("#question", QUESTION)
            page.click("#send")
            page.wait_for_function("window.bubo.state.history.length === 2", timeout=180_000)
            answer = page.inner_text("#conversation .turn:last-child .body")
            assert answer == want.text
            entities = page.evaluate("window.bubo.state.entities.map((e) => [e.phrase, e.start, e.end, e.label])")
            assert entities == [[e.phrase, e.start, e.end, e.label] for e in want.entities]
            # each mask was drawn as soon as its phrase was on the page, not after the whole answer: the
            # server's record of this request (whether the grounding result came before the answer's end
            # varies from run to run) against what the page had written when the entity came
            written = page.evaluate("window.bubo.state.entities.map((e) => e.written)")
            sent = page.evaluate("window.bubo.state.timings.entities.map((t) => [t.index, t.start, t.before_answer_end])")
            assert [s[:2] for s in sent] == [[e.index, e.start] for e in want.entities]
            early = [before_end for _, _, before_end in sent]
            for entity, chars, before_end in zip(want.entities, written, early):
                assert chars >= entity.end and (chars < len(answer)) == before_end, (entity.phrase, chars, before_end)
            assert page.evaluate(MASK_PIXELS) > 20  # the first mask is drawn, in its colour
            phrases = page.locator("#conversation .phrase")
            assert phrases.count() == len(want.entities) and phrases.first.inner_text() == want.entities[0].phrase
            phrases.first.hover()  # its mask is highlighted
            assert page.evaluate("window.bubo.state.highlighted.phrase") == want.entities[0].phrase
            page.mouse.move(0, 0)
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot))
            if os.environ.get("BUBO_SCREENSHOT"):  # `BUBO_SCREENSHOT=docs/web_page.png pytest tests/test_web.py`
                shutil.copy(shot, os.environ["BUBO_SCREENSHOT"])
            assert not errors, errors
        finally:
            browser.close()


def test_the_page_says_what_is_wrong(loop, stack, picture):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{stack.http_port}/")
            page.wait_for_function("window.bubo.state.model !== null")
            with part_down(loop, stack, "triton"):
                page.evaluate("""async (url) => {
                    const blob = await (await fetch(url)).blob();
                    await window.bubo.setImage(blob);
                }""", "/static/samples/picture-0.jpg")
                page.fill("#question", "What is it?")
                page.click("#send")
                page.wait_for_selector("#conversation .turn.error", timeout=60_000)
                message = page.inner_text("#conversation .turn.error")
                assert "down or restarting" in message and "Triton" in message
        finally:
            browser.close()
