"""The supervisor's rules, on a part whose probe answers are scripted (the real parts are killed and
frozen in tests/test_reliability.py): crashes restart at once, hangs only after the hang limit,
crash loops back off, waiters wake when a part goes down, a restart in progress is finished on stop."""

import asyncio
import time

import pytest

from serving.errors import PartUnavailable
from serving.supervisor import Part, Problem, Supervisor


class Scripted:
    restartable = True

    def __init__(self, answers, restart_s=0.0, fail_restarts=0):
        self.part = Part("thing", "the thing")
        self.answers = list(answers)  # None (healthy), "hang" or "crash"; the last answer repeats
        self.restart_s = restart_s
        self.fail_restarts = fail_restarts
        self.restarts: list[float] = []
        self.restart_done = 0

    async def probe(self):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            return None
        return Problem(answer, fatal=answer == "crash")

    async def restart(self):
        self.restarts.append(time.monotonic())
        await asyncio.sleep(self.restart_s)
        if self.fail_restarts:
            self.fail_restarts -= 1
            raise RuntimeError("could not start")
        self.answers = [None]
        self.restart_done += 1


class Metrics:
    def __init__(self):
        self.ups, self.restart_count = [], 0
        this = self

        class Labels:
            def __init__(self, kind):
                self.kind = kind

            def labels(self, name):
                return self

            def set(self, value):
                this.ups.append(value)

            def inc(self):
                this.restart_count += 1

        self.part_up, self.restarts = Labels("up"), Labels("restarts")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def supervised(watched, **kwargs):
    changes = []

    async def on_change():
        changes.append(watched.part.up)

    metrics = Metrics()
    options = dict(interval_s=0.01, failures_to_down=2, hang_restart_s=0.3, backoff_s=(0.05, 0.2), stable_s=5.0)
    options.update(kwargs)
    return Supervisor([watched], metrics=metrics, on_change=on_change, **options), changes, metrics


def test_a_crash_is_restarted_at_once_and_health_follows():
    async def main():
        watched = Scripted([None, None, "crash"])
        supervisor, changes, metrics = supervised(watched)
        supervisor.start()
        while watched.restart_done == 0:
            await asyncio.sleep(0.01)
        while not watched.part.up:
            await asyncio.sleep(0.01)
        await supervisor.stop()
        return watched, changes, metrics

    watched, changes, metrics = run(main())
    assert len(watched.restarts) == 1 and watched.part.restarts == 1 and metrics.restart_count == 1
    assert changes == [False, True]  # down (health NOT_SERVING), then up again
    assert metrics.ups[-1] == 1


def test_a_hang_goes_down_after_two_probes_and_is_restarted_only_after_the_hang_limit():
    async def main():
        watched = Scripted(["hang"])
        supervisor, changes, _ = supervised(watched)
        started = time.monotonic()
        supervisor.start()
        while watched.part.up:
            await asyncio.sleep(0.005)
        down_after = time.monotonic() - started
        assert watched.restarts == []
        while not watched.restarts:
            await asyncio.sleep(0.01)
        restarted_after = watched.restarts[0] - started
        await supervisor.stop()
        return down_after, restarted_after

    down_after, restarted_after = run(main())
    assert down_after < 0.3 <= restarted_after


def test_a_part_that_comes_back_by_itself_is_not_restarted():
    async def main():
        watched = Scripted(["hang", "hang", "hang", None])
        supervisor, changes, _ = supervised(watched, hang_restart_s=10.0)
        supervisor.start()
        while not changes or not watched.part.up:
            await asyncio.sleep(0.01)
        await supervisor.stop()
        return watched, changes

    watched, changes = run(main())
    assert changes == [False, True] and watched.restarts == []


def test_a_crash_loop_backs_off_and_a_failed_restart_is_retried():
    async def main():
        watched = Scripted(["crash"], fail_restarts=3)
        supervisor, _, metrics = supervised(watched)
        supervisor.start()
        while watched.restart_done == 0:
            await asyncio.sleep(0.01)
        await supervisor.stop()
        return watched, metrics

    watched, metrics = run(main())
    gaps = [b - a for a, b in zip(watched.restarts, watched.restarts[1:])]
    assert len(watched.restarts) == 4 and metrics.restart_count == 1
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # 0.05, 0.1, 0.2 (the cap)


def test_stop_finishes_a_restart_in_progress():
    async def main():
        watched = Scripted(["crash"], restart_s=0.3)
        supervisor, _, _ = supervised(watched)
        supervisor.start()
        while not watched.restarts:
            await asyncio.sleep(0.01)
        await supervisor.stop()
        return watched

    assert run(main()).restart_done == 1


def test_guard_wakes_its_waiters_when_the_part_goes_down_and_never_cancels_the_work():
    async def main():
        part = Part("triton", "Triton")
        work = asyncio.get_running_loop().create_future()
        waiter = asyncio.create_task(part.guard(work, timeout_s=10, what="x"))
        await asyncio.sleep(0.01)
        part.mark_down("exited")
        with pytest.raises(PartUnavailable, match="Triton is unavailable: exited"):
            await waiter
        assert not work.cancelled()
        with pytest.raises(PartUnavailable):
            part.require()
        part.mark_up()
        other = asyncio.create_task(part.guard(work, timeout_s=10, what="x"))
        await asyncio.sleep(0.01)
        other.cancel()  # the caller gives up: the work goes on
        await asyncio.gather(other, return_exceptions=True)
        assert not work.done()
        work.set_result(42)
        assert await part.guard(work, timeout_s=1, what="x") == 42
        slow = asyncio.get_running_loop().create_future()
        with pytest.raises(PartUnavailable, match="did not answer x within 0 s"):
            await part.guard(slow, timeout_s=0.05, what="x")

    run(main())
