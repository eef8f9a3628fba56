"""The DALI graphs of the paper's train and val transforms, and the loop that drives them.

A graph's only input is one `fn.external_source` whose Python callback hands over the
next batch: the encoded files and, for training, each sample's drawn parameters (see
bot.data.dali). The graphs hold no random operator.
"""

from __future__ import annotations

from collections import deque

import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

from bot.data.constants import MEAN, STD

VAL_INPUTS = ("jpegs", "size", "crop_x", "crop_y")


def train_inputs(jitter: bool, hue: bool, contrast: bool = True, saturation: bool = True) -> tuple[str, ...]:
    """The names train_graph reads, in order (an unused external source output costs time).

    `jitter` is any of brightness, contrast, saturation; `contrast` and `saturation` say
    which of them need pixel work beyond CropMirrorNormalize's per-image mean and std.
    """
    return (("jpegs", "anchor", "shape", "width") + (("hue",) if hue else ())
            + (("saturation", "grey_weight") if jitter and saturation else ())
            + (("mean_weight",) if jitter and contrast else ()) + ("mean", "std"))


def train_graph(inputs, size: int, gpu: bool, jitter: bool, hue: bool, contrast: bool = True,
                saturation: bool = True):
    """Decode the crop window, resize, then colour jitter + flip + PCA lighting + normalize as one affine map.

    Everything after the resize is affine per image (bot.data.dali.colour_terms): with g
    a pixel's grey (0.299, 0.587, 0.114) . x and m the image's mean grey,
        y = (b c s x + b c (1 - s) g + b (1 - c) m + offset - MEAN) / STD
          = (pre - (MEAN - offset) / (b c)) / (STD / (b c)),   pre = s x + (1 - s) g + (1 - c) / c m,
    so the only pixel work besides the resize (which also flips) and CropMirrorNormalize (HWC -> CHW, float, per-image
    per-channel mean and std: brightness, PCA lighting, normalization) is the saturation's
    blend with the grey plane, one DALI arithmetic pass, and the grey mean, one reduction
    of that plane. On the CPU the contrast term, a per-image constant, joins CMN's mean;
    on the GPU (CMN's mean must live on the CPU) it stays in `pre`. Nothing is clamped:
    see bot.data.dali.colour_terms for how that differs from torchvision.

    The colour work runs after the resize, on size x size pixels rather than on the crop
    (8%-100% of a ~500 x 375 image, so usually more pixels): the same result up to
    rounding, since resizing is linear per channel. DALI's own colour operators
    (color_twist, hsv, saturation, coord_transform) mix channels in slower kernels, and
    brightness_contrast's contrast centre is not the image mean.
    """
    named = dict(zip(train_inputs(jitter, hue, contrast, saturation), inputs))
    jpegs, anchor, shape, width = (named[k] for k in ("jpegs", "anchor", "shape", "width"))
    mean, std = named["mean"], named["std"]
    images = fn.decoders.image_slice(jpegs, anchor, shape, device="mixed" if gpu else "cpu",
                                     output_type=types.RGB, adjust_orientation=False, axis_names="WH")
    # torchvision's RandomResizedCrop: bilinear with antialias (a triangle filter when shrinking);
    # width -size flips (the filter is symmetric: the mirror image of the unflipped output),
    # a little cheaper than CMN's mirror on the float image
    images = fn.resize(images, resize_x=width, resize_y=float(size), interp_type=types.INTERP_LINEAR,
                       antialias=True)
    if hue:  # a rotation of the YIQ chroma plane (off in the paper's recipes)
        images = fn.hsv(images, hue=named["hue"])
    if jitter and (saturation or contrast):
        on_device = (lambda t: t.gpu()) if gpu else (lambda t: t)
        grey = fn.color_space_conversion(images, image_type=types.RGB, output_type=types.GRAY)  # (H, W, 1)
        pre_terms = []
        if contrast:
            mean_grey = fn.reductions.mean(grey, dtype=types.FLOAT)
            if gpu:
                pre_terms.append(mean_grey * on_device(named["mean_weight"]))
            else:
                mean = mean - mean_grey * named["mean_weight"]
        if saturation:
            grey_term = grey * on_device(named["grey_weight"])
            for term in pre_terms:
                grey_term = grey_term + term
            images = images * on_device(named["saturation"]) + grey_term
        elif pre_terms:
            images = images + pre_terms[0]
    # brightness and contrast scale, PCA lighting, normalize, HWC -> CHW float32
    return fn.crop_mirror_normalize(images, mean=mean, std=std, dtype=types.FLOAT,
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

