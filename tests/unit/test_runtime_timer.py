"""teredo.adapters.timer: one handle, re-armed to the core's deadline; no timing assertions."""

from __future__ import annotations

import asyncio

from teredo.adapters.timer import Timer


def test_set_rearm_and_cancel() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = Timer(fired.append)
        assert timer.deadline is None

        far = loop.time() + 3600
        timer.set(far)
        handle = timer._handle
        assert handle is not None and handle.when() == far
        timer.set(far)  # the same deadline again: the handle is kept, not recreated
        assert timer._handle is handle

        timer.set(far + 1)  # a new deadline replaces the old handle
        assert handle.cancelled()
        assert timer.deadline == far + 1 and timer._handle is not None
        assert timer._handle.when() == far + 1

        timer.cancel()
        assert timer.deadline is None and timer._handle is None
        assert fired == []

    asyncio.run(main())


def test_fires_once_with_now_not_before_the_deadline() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        fired: list[float] = []

        def on_timer(now: float) -> None:
            fired.append(now)
            done.set()

        timer = Timer(on_timer)
        deadline = loop.time()  # already due
        timer.set(deadline)
        await done.wait()
        assert fired == [fired[0]] and fired[0] >= deadline
        assert timer.deadline is None  # disarmed after firing
        timer.set(deadline)  # re-arming the same value after it fired arms again
        assert timer.deadline == deadline
        timer.cancel()

    asyncio.run(main())


def test_callback_may_rearm_from_inside() -> None:
    """The usual pattern: handle_timer, then set(core.get_timer()) from the callback."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        deadlines = [loop.time(), loop.time(), None]  # a fake core's successive get_timer()
        calls: list[float] = []

        def on_timer(now: float) -> None:
            calls.append(now)
            nxt = deadlines[len(calls)]
            timer.set(nxt)
            if nxt is None:
                done.set()

        timer = Timer(on_timer)
        timer.set(deadlines[0])
        await done.wait()
        assert len(calls) == 2
        assert timer.deadline is None

    asyncio.run(main())
