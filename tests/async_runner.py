"""Runs coroutines on one long-lived event loop in a background thread.

Engines (vLLM's AsyncLLM) bind to the loop they start on; module-scoped fixtures keep one engine
for many tests, so the tests submit their coroutines to that engine's loop.
"""

import asyncio
import threading


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
