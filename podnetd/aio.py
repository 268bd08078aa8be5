"""asyncio helpers the daemon needs on Python 3.11."""
import asyncio


async def within(awaitable, seconds: float):
    """await awaitable for at most seconds (TimeoutError after), as asyncio.wait_for, but built
    on asyncio.timeout: 3.11's wait_for can swallow a cancellation that arrives just as the
    awaited thing completes (fixed in 3.12), and a task that shrugs off its cancel leaves
    whoever awaits it waiting forever (a container's probe task outliving the container kept
    its supervisor from ever restarting it)."""
    async with asyncio.timeout(seconds):
        return await awaitable
