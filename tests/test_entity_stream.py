"""`wake_on`: the server's token stream with a mark where the grounding result landed, so entities
already written go out then; and closing or cancelling it ends the engine's stream (its abort)."""

import asyncio
import contextlib

import pytest

from serving.server import GROUNDED, wake_on


def events(log, count=5, gap_s=0.02):
    async def generate():
        try:
            for i in range(count):
                await asyncio.sleep(gap_s)
                log.append(("event", i))
                yield i
        finally:
            log.append(("closed",))  # where the engine aborts its request
    return generate()


async def after(delay_s, log):
    await asyncio.sleep(delay_s)
    log.append(("grounded",))


def test_the_mark_comes_when_grounding_lands_not_with_the_next_event():
    """The engine's events are released one by one; grounding lands while event 2 is still held back."""
    async def run():
        release, grounded = asyncio.Queue(), asyncio.Event()

        async def engine():
            for i in range(4):
                await release.get()
                yield i

        task = asyncio.create_task(grounded.wait())
        stream = wake_on(task, engine())
        seen = []
        for i in range(2):
            release.put_nowait(None)
            seen.append(await anext(stream))
        grounded.set()  # event 2 is not released: only the mark can come now
        seen.append(await asyncio.wait_for(anext(stream), 5))
        for i in range(2):
            release.put_nowait(None)
            seen.append(await anext(stream))
        await stream.aclose()
        return seen

    assert asyncio.run(run()) == [0, 1, GROUNDED, 2, 3]


def test_no_mark_when_grounding_lands_after_the_answer():
    async def run():
        log = []
        task = asyncio.create_task(after(0.5, log))
        seen = [item async for item in wake_on(task, events(log, count=3))]
        task.cancel()
        return seen

    assert asyncio.run(run()) == [0, 1, 2]


@pytest.mark.parametrize("stop_after", [0, 1, 3])
def test_closing_or_cancelling_the_stream_closes_the_engines(stop_after):
    async def run(cancel):
        log = []
        task = asyncio.create_task(after(10, log))

        async def consume():
            stream = wake_on(task, events(log, count=10))
            async with contextlib.aclosing(stream):
                async for item in stream:
                    if item == stop_after and not cancel:
                        break

        consumer = asyncio.create_task(consume())
        if cancel:
            await asyncio.sleep(0.02 * stop_after + 0.01)  # mid-wait for the next event
            consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        task.cancel()
        return log

    for cancel in (False, True):
        log = asyncio.run(run(cancel))
        assert log[-1] == ("closed",), (cancel, log)
        assert log.count(("closed",)) == 1


def test_the_mark_comes_too_when_grounding_lands_while_the_consumer_is_busy():
    async def run():
        release, grounded = asyncio.Queue(), asyncio.Event()

        async def engine():
            for i in range(3):
                await release.get()
                yield i

        task = asyncio.create_task(grounded.wait())
        stream = wake_on(task, engine())
        release.put_nowait(None)
        seen = [await anext(stream)]
        grounded.set()
        await asyncio.sleep(0.01)  # the consumer is elsewhere (sending event 0) when grounding lands
        seen.append(await asyncio.wait_for(anext(stream), 5))
        await stream.aclose()
        return seen

    assert asyncio.run(run()) == [0, GROUNDED]
