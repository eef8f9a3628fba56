"""The DALI graphs of the paper's train and val transforms, and the loop that drives them.

A graph's only input is one `fn.external_source` whose Python callback hands over the
next batch: the encoded files and, for training, each sample's drawn parameters (see
bot.data.dali). The graphs hold no random operator.
"""

from __future__ import annotations

from collections import deque

import torch
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

from bot.data.constants import MEAN, STD

VAL_INPUTS = ("jpegs", "size", "crop_x", "crop_y")


def train_inputs(jitter: bool, hue: bool) -> tuple[str, ...]:
    """The names train_graph reads, in order (an unused external source output costs time)."""
    return (("jpegs", "anchor", "shape", "mirror") + (("hue",) if hue else ())
            + (("x_scale", "grey_scale", "mean_scale") if jitter else ()) + ("mean",))


def train_graph(inputs, size: int, gpu: bool, jitter: bool, hue: bool):
    """Decode the crop window, resize, colour jitter, then flip + PCA lighting + normalize.

    The colour work runs after the resize, on size x size pixels rather than on the crop
    (8%-100% of a ~500 x 375 image, so usually more pixels): the same result up to
    rounding, since resizing is linear per channel and the jitter is a per-pixel affine map
    with a per-image mean. The jitter is one fused expression (bot.data.dali.colour_terms):
        out = clamp(x_scale x + grey_scale g + mean_scale m, 0, 255)
    g the pixel's grey, m the image's mean grey. It is built from DALI's element-wise
    arithmetic, which runs the same on CPU and GPU; DALI's own colour operators
    (color_twist, hsv, saturation) mix channels in a slower kernel, and
    brightness_contrast's contrast centre is not the image mean.
    """
    named = dict(zip(train_inputs(jitter, hue), inputs))
    jpegs, anchor, shape, mirror, mean = (named[k] for k in ("jpegs", "anchor", "shape", "mirror", "mean"))
    images = fn.decoders.image_slice(jpegs, anchor, shape, device="mixed" if gpu else "cpu",
                                     output_type=types.RGB, adjust_orientation=False, axis_names="WH")
    # torchvision's RandomResizedCrop: bilinear with antialias (a triangle filter when shrinking)
    images = fn.resize(images, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=True)
    if hue:  # a rotation of the YIQ chroma plane (off in the paper's recipes)
        images = fn.hsv(images, hue=named["hue"])
    if jitter:
        on_device = (lambda t: t.gpu()) if gpu else (lambda t: t)
        grey = fn.color_space_conversion(images, image_type=types.RGB, output_type=types.GRAY)  # (H, W, 1)
        mean_grey = fn.reductions.mean(grey, dtype=types.FLOAT)
        grey_term = grey * on_device(named["grey_scale"]) + mean_grey * on_device(named["mean_scale"])
        images = images * on_device(named["x_scale"]) + grey_term
        # min then max: half the time of dmath.clamp on the CPU in DALI 2.4
        images = dmath.max(dmath.min(images, types.Constant(255.0, dtype=types.FLOAT)),
                           types.Constant(0.0, dtype=types.FLOAT))
    # flip, PCA lighting (in the mean: x + offset - MEAN), normalize, HWC -> CHW float32
    return fn.crop_mirror_normalize(images, mirror=mirror, mean=mean, std=list(STD), dtype=types.FLOAT,
                                    output_layout="CHW")


def val_graph(inputs, size: int, gpu: bool):
    """Decode, resize to the size torchvision's Resize(shorter side) gives, centre crop, normalize."""
    jpegs, out_size, crop_x, crop_y = inputs
    images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                               adjust_orientation=False)
    images = fn.resize(images, size=out_size, interp_type=types.INTERP_LINEAR, antialias=True)
    return fn.crop_mirror_normalize(images, crop=[size, size], crop_pos_x=crop_x, crop_pos_y=crop_y,
                                    rounding="truncate", mean=list(MEAN), std=list(STD), dtype=types.FLOAT,
                                    output_layout="CHW")


class Runner:
    """One DALI pipeline fed by a Python callback; `epoch(items)` yields (item, images).

    `make_inputs(item)` turns one planned batch (any object) into a dict of the graph's
    input batches, of which `names` are fed, in order. Up to `prefetch` batches are in
    flight while the caller trains on one.
    """

    def __init__(self, graph, names: tuple[str, ...], make_inputs, batch: int, threads: int, device: torch.device,
                 seed: int, prefetch: int = 2):
        self.make_inputs, self.names, self.device = make_inputs, names, device
        self.todo, self.inflight, self.running = iter(()), deque(), False
        gpu = device.type == "cuda"
        device_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None
        self.pipe = Pipeline(batch_size=batch, num_threads=max(1, threads), device_id=device_id, seed=seed,
                             prefetch_queue_depth=prefetch)
        with self.pipe:
            inputs = fn.external_source(source=self._next, num_outputs=len(names), batch=True)
            self.pipe.set_outputs(graph(inputs, gpu=gpu))
        self.pipe.build()

    def _next(self):
        item = next(self.todo)  # StopIteration ends DALI's epoch
        inputs = self.make_inputs(item)
        self.inflight.append(item)
        return tuple(inputs[name] for name in self.names)

    def _to_torch(self, tensor_list) -> torch.Tensor:
        tensor = tensor_list.as_tensor()
        out = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor, out, cuda_stream=stream)
        return out

    def _finish(self) -> None:
        """End an epoch the caller left early: let DALI see the end, drop what is in flight."""
        if not self.running:
            return
        self.todo = iter(())
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
        """Yield (item, images) for each planned item; `on_error(exc, in_flight_items)` names a bad file."""
        self._finish()
        self.todo, self.running = iter(items), True
        self.pipe.schedule_run()
        while True:
            try:
                outputs = self.pipe.share_outputs()
            except StopIteration:
                break
            except RuntimeError as e:
                self.running = False
                raise on_error(e, list(self.inflight)) from None
            item = self.inflight.popleft()
            images = self._to_torch(outputs[0])
            self.pipe.release_outputs()
            self.pipe.schedule_run()
            yield item, images
        self.pipe.reset()
        self.running = False

