"""Host buffers pinned once and reused, and host→device copies on a side CUDA stream.

Pinning on the fly can cost more than the copy it speeds up, so each prefetch slot owns an arena of tensors that
grow to the largest size asked for and are then reused for every batch. Without CUDA nothing is pinned and the
"copy" is the identity: the same code runs on CPU.
"""

from __future__ import annotations

import math

import torch


class BufferArena:
    """Named host tensors reused across batches; `get` returns a view of the requested shape."""

    def __init__(self, pin: bool):
        self.pin = pin
        self._store: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._store.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            grow = n if buf is None else max(n, buf.numel() + buf.numel() // 2)
            buf = torch.empty(grow, dtype=dtype, pin_memory=self.pin)
            self._store[name] = buf
        return buf[:n].view(shape)


class CopyStream:
    """Host→device copies on a side stream; the consumer's stream waits on an event, not on the whole device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def to_device(self, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], object]:
        """Start the copies; returns the device tensors and an event to `wait` on before using them."""
        if not self.cuda:
            return tensors, None
        with torch.cuda.stream(self.stream):
            out = {k: v.to(self.device, non_blocking=True) for k, v in tensors.items()}
            event = torch.cuda.Event()
            event.record(self.stream)
        return out, event

    def wait(self, tensors: dict[str, torch.Tensor], event: object) -> None:
        """Make the current stream wait for the copy; tell the allocator the tensors are used there."""
        if not self.cuda or event is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(event)
        for t in tensors.values():
            t.record_stream(current)

    def host_reusable(self, event: object) -> None:
        """Block until the copy out of the host buffers finished, so the buffers may be refilled."""
        if self.cuda and event is not None:
            event.synchronize()
