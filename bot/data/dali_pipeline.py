"""The DALI graphs of the paper's train and val transforms, and the loop that drives them.

A graph's only input is one `fn.external_source` whose Python callback hands over the
next batch: the encoded files and, for training, each sample's drawn parameters (see
bot.data.dali), prepared ahead on a thread of their own (Feeder). The graphs hold no
random operator.
"""

from __future__ import annotations

import queue
import threading
from collections import deque

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

TORCH_DTYPES = {types.UINT8: torch.uint8, types.FLOAT: torch.float32}

# As NVIDIA's DALI ResNet-50 examples: buffers sized for the largest ImageNet image, so that
# nvJPEG never reallocates (and synchronizes) mid-run. They are per decoding thread (one device
# buffer, two pinned host ones: 3.4 GB of GPU and 4.5 GB of pinned memory at 8 threads), so only
# the training pipeline, which runs all the time, holds them.
PREALLOCATED = dict(device_memory_padding=211025920, host_memory_padding=140544512,
                    preallocate_width_hint=5980, preallocate_height_hint=6430)


def decoder_args(gpu: bool, hw_decoder_load: float = 0.65, preallocate: bool = True) -> dict:
    """The decoder's device and settings: libjpeg-turbo on the CPU, nvJPEG on a GPU, with the CPU
    decoder's and PIL's chroma upsampling (docs/gpu.md).

    hw_decoder_load (data.hw_decoder_load) is the share of each batch the hardware JPEG
    decoder takes on GPUs that have one; which images it gets depends on the batch, and its
    pixels may differ from the CUDA decoder's by rounding (docs/gpu.md).
    """
    if not gpu:
        return dict(device="cpu")
    return dict(device="mixed", hw_decoder_load=hw_decoder_load, jpeg_fancy_upsampling=True,
                **(PREALLOCATED if preallocate else {}))


def train_inputs(hue: bool, gpu: bool, padded: bool = False) -> tuple[str, ...]:
    """The names train_graph reads, in order (an unused external source output costs time)."""
    geometry = ("flip",) if padded else (("width", "height") if gpu else ())
    return ("jpegs", "anchor", "shape") + geometry + (("hue",) if hue else ())


def train_graph(inputs, gpu: bool, hue: bool, antialias: bool = True, hw_decoder_load: float = 0.65,
                padded: bool = False):
    """Decode each sample's crop window; on the GPU also resize it (flipping on the way).
    `padded` (data.crop=padded): padded_graph instead.

    CPU: the crops as decoded (uint8 HWC, ragged); bot.data.dali resizes them with
    torchvision's resize, the reference path's own and faster than DALI's CPU resize.
    GPU: uint8 HWC, at each sample's `height` x |`width`| (the epoch's training size, fed per
    batch), and each image's mean pixel (float, 3), which contrast needs.
    Colour and normalization follow in torch, after the resize (bot.data.dali_draws.colour_normalize).
    """
    named = dict(zip(train_inputs(hue, gpu, padded), inputs))
    if padded:
        return padded_graph(named, gpu, hue, hw_decoder_load)
    images = fn.decoders.image_slice(named["jpegs"], named["anchor"], named["shape"], output_type=types.RGB,
                                     adjust_orientation=False, axis_names="WH", **decoder_args(gpu, hw_decoder_load))
    if hue:  # a rotation of the YIQ chroma plane (off in the paper's recipes); per pixel, so before
        images = fn.hsv(images, hue=named["hue"])  # or after the resize alike, up to rounding
    if not gpu:
        return images
    # torchvision's RandomResizedCrop: bilinear, with antialias a triangle filter when shrinking;
    # width -size flips (the filter is symmetric: the mirror image of the unflipped output)
    images = fn.resize(images, resize_x=named["width"], resize_y=named["height"], interp_type=types.INTERP_LINEAR,
                       antialias=antialias)
    return images, fn.reductions.mean(images, axes=[0, 1], dtype=types.FLOAT)


def padded_graph(named: dict, gpu: bool, hue: bool, hw_decoder_load: float = 0.65):
    """data.crop=padded on either device: decode the whole image, cut each sample's size x size
    window (`anchor` may be negative: the window starts in the padding) with zeros outside the
    image, as gluon-cv's RandomCrop(pad=) pads in pixel values, and mirror where `flip` says.
    uint8 HWC, all of one size; on the GPU also each image's mean pixel, as train_graph's.
    """
    images = fn.decoders.image(named["jpegs"], output_type=types.RGB, adjust_orientation=False,
                               **decoder_args(gpu, hw_decoder_load))
    if hue:
        images = fn.hsv(images, hue=named["hue"])
    images = fn.slice(images, named["anchor"], named["shape"], axis_names="WH", normalized_anchor=False,
                      normalized_shape=False, out_of_bounds_policy="pad", fill_values=0)
    images = fn.flip(images, horizontal=named["flip"])
    return (images, fn.reductions.mean(images, axes=[0, 1], dtype=types.FLOAT)) if gpu else images


def val_inputs(padded: bool = False) -> tuple[str, ...]:
    """The names val_graph reads, in order."""
    return ("jpegs",) if padded else ("jpegs", "size", "crop_x", "crop_y")


def val_graph(inputs, size: int, gpu: bool, mean, std, antialias: bool = True, hw_decoder_load: float = 0.65,
              padded: bool = False):
    """Decode, resize to the size torchvision's Resize(shorter side) gives, centre crop, normalize
    by `mean` and `std` (data.mean, data.std); `padded` (data.crop=padded): decode and normalize,
    the image as it is (bot.data.dali checked its size)."""
    named = dict(zip(val_inputs(padded), inputs))
    images = fn.decoders.image(named["jpegs"], output_type=types.RGB, adjust_orientation=False,
                               **decoder_args(gpu, hw_decoder_load, preallocate=False))
    if padded:
        return fn.crop_mirror_normalize(images, mean=list(mean), std=list(std), dtype=types.FLOAT,
                                        output_layout="CHW")
    images = fn.resize(images, size=named["size"], interp_type=types.INTERP_LINEAR, antialias=antialias)
    return fn.crop_mirror_normalize(images, crop=[size, size], crop_pos_x=named["crop_x"], crop_pos_y=named["crop_y"],
                                    rounding="truncate", mean=list(mean), std=list(std), dtype=types.FLOAT,
                                    output_layout="CHW")


class BatchBuffers:
    """Batch tensors, reused once nothing outside references them.

    On the CPU a fresh batch (38 MB, above glibc's largest mmap threshold) comes as
    untouched pages whose faults cost more than the writing, so the last few buffers are
    kept; one is handed out again only when its storage's use count says nothing outside
    the pool holds it. On CUDA torch's caching allocator already reuses memory.
    """

    def __init__(self, device: torch.device, keep: int = 4):
        self.device, self.keep, self.pool = device, keep, []  # [(tensor, use count while only the pool holds it)]

    @staticmethod
    def _uses(tensor: torch.Tensor) -> int:
        return torch._C._storage_Use_Count(StorageWeakRef(tensor.untyped_storage()).cdata)

    def take(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `shape` for the caller alone (a new view: the pool keeps its own)."""
        shape = tuple(shape)
        if self.device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=self.device)
        for tensor, idle in self.pool:
            if tuple(tensor.shape) == shape and tensor.dtype == dtype and self._uses(tensor) == idle:
                return tensor.view(shape)
        tensor = torch.empty(shape, dtype=dtype)
        self.pool = [*self.pool, (tensor, self._uses(tensor))][-self.keep:]
        return tensor.view(shape)


class Feeder:
    """`make_inputs(item)` for each planned item, in order, on a thread of its own, up to `depth` ahead.

    DALI calls an external source's callback on the training loop's thread, where file
    reads and draws would hold the loop. The thread only computes ahead (every draw is a
    function of seed, epoch and index), so the batches are the same; an error is raised
    where its item is asked for, as without the thread.
    """

    def __init__(self, items, make_inputs, depth: int):
        self.queue, self.stopped, self.done = queue.Queue(depth), threading.Event(), False
        self.thread = threading.Thread(target=self._run, args=(iter(items), make_inputs), daemon=True,
                                       name="dali-feeder")
        self.thread.start()

    def _run(self, items, make_inputs) -> None:
        for item in items:
            try:
                result = (item, make_inputs(item), None)
            except BaseException as e:  # noqa: BLE001 - handed over and raised on the caller's thread
                result = (item, None, e)
            if not self._put(result) or result[2] is not None:
                return
        self._put(None)

    def _put(self, value) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(value, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def next(self):
        """(item, inputs) of the next item; StopIteration after the last."""
        if self.done:
            raise StopIteration
        value = self.queue.get()
        if value is None:
            self.done = True
            raise StopIteration
        item, inputs, error = value
        if error is not None:
            self.done = True
            raise error
        return item, inputs

    def stop(self) -> None:
        self.done = True
        self.stopped.set()
        self.thread.join()


class Runner:
    """One DALI pipeline fed by a Python callback; `epoch(items)` yields (item, outputs).

    `make_inputs(item)` turns one planned batch (any object) into a dict of the graph's
    input batches, of which `names` are fed, in order; a Feeder thread prepares them ahead.
    Up to `prefetch` batches are in flight while the caller trains on one. `finish(item, dali_outputs)`, if given, makes
    the outputs from DALI's while they are valid (they may be viewed without a copy);
    otherwise each output is copied into a torch tensor.
    """

    def __init__(self, graph, names: tuple[str, ...], make_inputs, batch: int, threads: int, device: torch.device,
                 seed: int, prefetch: int = 2, finish=None):
        self.make_inputs, self.names, self.device, self.finish = make_inputs, names, device, finish
        self.feeder, self.inflight, self.running, self.prefetch = Feeder((), make_inputs, 1), deque(), False, prefetch
        self.buffers = BatchBuffers(device)
        gpu = device.type == "cuda"
        device_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None
        self.pipe = Pipeline(batch_size=batch, num_threads=max(1, threads), device_id=device_id, seed=seed,
                             prefetch_queue_depth=prefetch)
        with self.pipe:
            inputs = fn.external_source(source=self._next, num_outputs=len(names), batch=True)
            outputs = graph(inputs, gpu=gpu)
            self.pipe.set_outputs(*(outputs if isinstance(outputs, tuple) else (outputs,)))
        self.pipe.build()

    def _next(self):
        item, inputs = self.feeder.next()  # StopIteration ends DALI's epoch
        self.inflight.append(item)
        return tuple(inputs[name] for name in self.names)

    def _to_torch(self, tensor_list) -> torch.Tensor:
        tensor = tensor_list.as_tensor()
        out = self.buffers.take(tensor.shape(), TORCH_DTYPES[tensor.dtype])
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor, out, cuda_stream=stream)
        return out

    def _finish(self) -> None:
        """End an epoch the caller left early: let DALI see the end, drop what is in flight."""
        self.feeder.stop()
        if not self.running:
            return
        self.pipe.schedule_run()
        while True:
            try:
                self.pipe.share_outputs()
            except StopIteration:
                break
            self.pipe.release_outputs()
        self.pipe.reset()
        self.inflight.clear()
        self.running = False

    def epoch(self, items, on_error):
        """Yield (item, [torch tensor of each graph output]) for each planned item.

        `on_error(exc, in_flight_items)` turns a DALI failure into an error naming the bad file.
        """
        self._finish()
        # the feeder keeps every batch DALI may ask for ready: its prefetch queue and one more
        self.feeder, self.running = Feeder(items, self.make_inputs, self.prefetch + 1), True
        self.pipe.schedule_run()
        while True:
            try:
                outputs = self.pipe.share_outputs()
            except StopIteration:
                break
            except RuntimeError as e:
                self.running = False
                self.feeder.stop()
                raise on_error(e, list(self.inflight)) from None
            item = self.inflight.popleft()
            tensors = self.finish(item, outputs) if self.finish else [self._to_torch(out) for out in outputs]
            self.pipe.release_outputs()
            self.pipe.schedule_run()
            yield item, tensors
        self.pipe.reset()
        self.feeder.stop()
        self.running = False

