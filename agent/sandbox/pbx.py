"""A fake Yeastar PBX: the WebSocket *client* that pushes call audio (docs/protocols.md).

It behaves as the vendor documents: one connection per call, the secret in a request
header, JSON text frames with base64 PCM16, the channels of the call interleaved,
1280 PCM bytes per frame every 80 ms (8 kHz) or 40 ms (16 kHz), an ``end`` frame per
channel, then the close. Tests, the benchmark and demos drive the agent's server
with it::

    channels = [PbxChannel("PJSIP/1009-0000005", "1009", tone(440)),
                PbxChannel("PJSIP/1010-0000006", "1010", tone(660))]
    async with PbxCall(url, channels, secret="s3cret") as call:   # connects
        await call.stream(2.0)                                     # paced, interleaved
        await call.end()                                           # `end` per channel
    # leaving the block closes the connection

Faults are plain methods: :meth:`PbxCall.send_raw` sends anything (garbage, binary,
oversized messages); ``header=None`` leaves the secret header out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from agent.pcm import Pcm
from agent.proto.yeastar import (
    BYTES_PER_SAMPLE,
    FRAGMENT_BYTES,
    STATUS_END,
    encode_frame,
)

Generator = Callable[[int, int, int], Pcm]
"""``(first_sample, count, rate) -> int16 samples``: what one party of the call says."""

_callids = itertools.count(1)
ws_logger = logging.getLogger(__name__ + ".ws")  # the PBX's side, apart from the agent's


def tone(freq_hz: float = 440.0, dbfs: float = -12.0) -> Generator:
    """A sine at ``freq_hz`` whose peak is ``dbfs`` below full scale."""
    amplitude = 32767 * 10 ** (dbfs / 20)

    def generate(first: int, count: int, rate: int) -> Pcm:
        n = np.arange(first, first + count, dtype=np.float64)
        return np.round(amplitude * np.sin(2 * np.pi * freq_hz * n / rate)).astype(np.int16)

    return generate


@dataclass
class PbxChannel:
    """One party of a call: its ``channelid``, its ``number`` and what it says."""

    channelid: str
    number: str
    generator: Generator = field(default_factory=tone)
    sent: int = 0  # samples sent so far


class PbxCall:
    """One call pushed to the agent: one WebSocket connection."""

    def __init__(
        self,
        url: str,
        channels: list[PbxChannel],
        *,
        secret: str | None,
        header: str | None = "Secret",
        sample_rate: int = 8000,
        callid: str | None = None,
        callflow: str = "",
        ssl_context: ssl.SSLContext | None = None,
        fragment_bytes: int = FRAGMENT_BYTES,
    ) -> None:
        self.url = url
        self.channels = channels
        self.secret = secret
        self.header = header
        self.sample_rate = sample_rate
        self.callid = callid or f"{int(time.time())}.{next(_callids)}"
        self.callflow = callflow
        self.ssl_context = ssl_context
        self.fragment_samples = fragment_bytes // BYTES_PER_SAMPLE
        self.frames_sent = 0
        self.ws: ClientConnection | None = None

    @property
    def fragment_s(self) -> float:
        return self.fragment_samples / self.sample_rate

    async def connect(self) -> None:
        """Open the connection; raises websockets' InvalidStatus on a 401 or 503."""
        headers = {}
        if self.header is not None and self.secret is not None:
            headers[self.header] = self.secret
        self.ws = await connect(
            self.url,
            additional_headers=headers,
            ssl=self.ssl_context,
            open_timeout=5,
            close_timeout=2,
            compression=None,
            logger=ws_logger,
        )

    async def stream(self, seconds: float, *, paced: bool = True) -> None:
        """Send ``seconds`` of every channel, one fragment per channel per tick, interleaved.

        Paced: a tick every fragment duration on an absolute schedule (like the PBX);
        unpaced: as fast as the connection takes them.
        """
        ticks = max(1, round(seconds / self.fragment_s))
        start = time.monotonic()
        for tick in range(ticks):
            if paced:
                delay = start + tick * self.fragment_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for channel in self.channels:
                pcm = channel.generator(channel.sent, self.fragment_samples, self.sample_rate)
                channel.sent += self.fragment_samples
                await self.send_raw(
                    encode_frame(
                        self.callid,
                        channel.channelid,
                        pcm,
                        number=channel.number,
                        callflow=self.callflow,
                    )
                )

    async def end(self) -> None:
        """The ``end`` frame of every channel (empty audio)."""
        for channel in self.channels:
            await self.send_raw(
                encode_frame(
                    self.callid,
                    channel.channelid,
                    b"",
                    number=channel.number,
                    status=STATUS_END,
                    callflow=self.callflow,
                )
            )

    async def send_raw(self, message: str | bytes) -> None:
        """Send one message as is."""
        assert self.ws is not None, "connect() first"
        await self.ws.send(message)
        self.frames_sent += 1

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def __aenter__(self) -> PbxCall:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def two_party_call(
    url: str, *, secret: str | None, freqs: tuple[float, float] = (440.0, 660.0), **kw: Any
) -> PbxCall:
    """A call between extensions 1009 and 1010, each saying a different tone.

    ``kw``: the other arguments of :class:`PbxCall` (header, sample_rate, callid, ...).
    """
    return PbxCall(
        url,
        [
            PbxChannel("PJSIP/1009-0000005", "1009", tone(freqs[0])),
            PbxChannel("PJSIP/1010-0000006", "1010", tone(freqs[1])),
        ],
        secret=secret,
        **kw,
    )
