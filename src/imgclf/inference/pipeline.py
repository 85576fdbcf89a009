"""From checked upload to answer: decoding on two lanes of threads, then the micro-batched model.

Decoding costs about its pixel count (a 16 MP PNG about 0.3 s, a photo-sized one a few ms), so images over
LARGE_IMAGE_PIXELS decode in a lane of their own: a flood of large images queues behind itself, never in
front of small ones. Both lanes may use every core; the OS shares them, and its scheduler favours the
short decodes that wake up over the long ones that keep running.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from imgclf.evaluation.gradcam import GradCAM, overlays_base64
from imgclf.inference.batching import MicroBatcher
from imgclf.inference.limits import ClientError
from imgclf.inference.predictor import Predictor
from imgclf.inference.settings import LARGE_IMAGE_PIXELS, ServerSettings

if TYPE_CHECKING:
    from fastapi import UploadFile

Item = tuple[torch.Tensor, int, bool, float | None]  # an image's tensor, top_k, explain, reject_below


class Lane:
    """Decode threads and the slots that bound how many uploads are held in memory waiting for them."""

    def __init__(self, threads: int, name: str) -> None:
        # Uploads wait spooled (Starlette keeps at most 1 MB of each in memory) until a slot frees.
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.slots = asyncio.Semaphore(2 * threads)


class Pipeline:
    """The decode lanes, the Grad-CAM explainer (torch models only) and the MicroBatcher of one app.

    `start` and `close` belong in the app's lifespan."""

    def __init__(self, predictor: Predictor, settings: ServerSettings,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.predictor = predictor
        self.on_batch = on_batch  # told each forward pass's size once it returned (metrics.py)
        threads = settings.decode_threads or min(4, os.cpu_count() or 1)
        self.lanes = {large: Lane(threads, f"imgclf-decode-{'large' if large else 'small'}") for large in (False, True)}
        self.cam = GradCAM(predictor.model, predictor.input_size) if predictor.model is not None else None
        self.batcher: MicroBatcher[Item, dict[str, Any]] = MicroBatcher(
            self.run_batch, settings.max_batch_size, settings.max_wait_ms, workers=settings.workers)

    async def start(self) -> None:
        await self.batcher.start()

    async def close(self) -> None:
        await self.batcher.close()
        for lane in self.lanes.values():
            lane.pool.shutdown(wait=False, cancel_futures=True)

    def run_batch(self, items: list[Item]) -> list[dict[str, Any]]:
        """One forward pass (on a batcher thread); Grad-CAM overlays for the items that asked."""
        batch = torch.cat([x for x, _, _, _ in items])
        probs = self.predictor.probabilities(batch)
        results = [self.predictor.rank(row[None], k, reject)[0]
                   for row, (_, k, _, reject) in zip(probs, items, strict=True)]
        wanted = [i for i, (_, _, explain, _) in enumerate(items) if explain]
        if wanted and self.cam is not None:  # the routes refuse explain=true without a torch model
            pngs = overlays_base64(self.cam, batch[wanted], probs[wanted].argmax(axis=1).tolist())
            for i, png in zip(wanted, pngs, strict=True):
                results[i]["explanation"] = png
        if self.on_batch is not None:
            self.on_batch(len(items))
        return results

    def check_explain(self, explain: bool) -> None:
        if explain and self.cam is None:
            raise ClientError(422, "explain=true needs a torch checkpoint: this server runs an ONNX model, "
                                   "which has no gradients (serve --checkpoint instead)")

    def check_reject(self, reject_below: float | None) -> None:
        if reject_below is not None and self.predictor.multilabel:
            raise ClientError(422, "reject_below is for single-label models: this multi-label model answers every "
                                   "class over its own threshold (chosen on validation)")

    def decode(self, data: bytes) -> torch.Tensor:
        try:
            return self.predictor.preprocess([data])
        except ValueError:
            raise ClientError(422, "the image could not be decoded (corrupt or truncated)") from None

    async def read_and_decode(self, upload: UploadFile, label: str, pixels: int) -> torch.Tensor:
        """A checked upload, read into memory only once its lane has a slot, decoded on the lane's threads."""
        lane = self.lanes[pixels > LARGE_IMAGE_PIXELS]
        async with lane.slots:
            await upload.seek(0)
            data = await upload.read()
            try:
                return await asyncio.get_running_loop().run_in_executor(lane.pool, self.decode, data)
            except ClientError as exc:
                raise exc.about(label) from None
