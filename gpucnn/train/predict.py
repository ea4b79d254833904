"""Using a trained model: rebuild it from a checkpoint, and the most likely classes of new images, normalised
as the model was trained."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import data, devices, models
from . import checkpoint as _checkpoint


def load_model(path, model=None, device=None):
    """(the model of a checkpoint, its Checkpoint) with the weights loaded, in eval mode, on `device`.

    The model is rebuilt from the name the checkpoint records (a zoo name or 'file.py:function'), or from
    `model` (a name, spec, function or Layer) when given. CheckpointError when it cannot be rebuilt or the
    weights do not fit it.
    """
    ckpt = _checkpoint.load(path)
    spec = ckpt.model_name if model is None else model
    if not spec:
        raise _checkpoint.CheckpointError(
            f"checkpoint {ckpt.path}: does not name its model (it was trained from a model object); pass "
            f"--model path/to/file.py:function (model=...) that builds it")
    from ..layers import Layer
    kwargs = ckpt.model_kwargs
    net = spec if isinstance(spec, Layer) else models.build(spec, **kwargs)
    ckpt.load_into(net)
    return net.to(devices.get_device(device)).eval(), ckpt


def data_meta(ckpt) -> dict:
    """The checkpoint's data description (classes, image_shape, mean, std, scale); for checkpoints written
    before it was kept, derived from the built-in data set the run names."""
    if ckpt.data:
        return ckpt.data
    spec = data.dataset_spec(ckpt.config.get("dataset", ""))
    kw = ckpt.model_kwargs
    size = kw.get("input_size", [0, 0])
    return {"name": spec.name, "classes": list(spec.classes), "image_shape": [kw.get("in_channels", 1), *size],
            "mean": list(spec.mean), "std": list(spec.std), "scale": 255.0}


def read_images(path) -> np.ndarray:
    """The images of one file as (N, C, H, W): a PNG/JPEG gives one image (grayscale: C=1, else RGB); an .npy
    array (H, W) one grayscale image, (C, H, W) or (H, W, C) one image, (N, C, H, W) or (N, H, W, C) several."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise data.DatasetError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
        if x.ndim == 2:
            x = x[None, None]
        elif x.ndim == 3:
            x = x[None]
        return data.images_nchw(x, str(path))
    if path.suffix.lower() not in data.files.IMAGE_SUFFIXES:
        raise data.DatasetError(f"{path}: expected a PNG or JPEG image or an .npy array")
    return data.read_image(path).transpose(2, 0, 1)[None]


def prepare_images(images: np.ndarray, meta: dict, where: str) -> np.ndarray:
    """Images (N, C, H, W) as the model takes them: channels matched (RGB -> luma for a one-channel model with
    ITU-R 601 weights as Pillow's convert("L"); gray -> RGB by repetition), then x/255 for uint8, and
    (x - mean) / std per channel, float32. DatasetError when the size differs from the training images'."""
    c, h, w = (int(s) for s in meta["image_shape"])
    if images.shape[2:] != (h, w):
        raise data.DatasetError(f"{where}: is {images.shape[3]}x{images.shape[2]} pixels, but the model takes "
                                f"{w}x{h} images (resize it first)")
    x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    if x.shape[1] != c:
        if c == 1 and x.shape[1] == 3:
            x = (x * np.array([0.299, 0.587, 0.114], np.float32)[None, :, None, None]).sum(1, keepdims=True)
        elif c == 3 and x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)
        else:
            raise data.DatasetError(f"{where}: has {x.shape[1]} channels, but the model takes {c}")
    mean = np.asarray(meta["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(meta["std"], np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def predict(model, images: np.ndarray, top: int = 3) -> list[list[tuple[int, float]]]:
    """The `top` most likely classes of prepared images (N, C, H, W), each a list of (class index,
    probability) from the softmax of the model's outputs, most likely first; the model runs in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with devices.device_scope(model.device):
            logits = devices.to_cpu(model(devices.to_device(images, model.device))).astype(np.float64)
    finally:
        model.train(was_training)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :top]
    return [[(int(k), float(p[i, k])) for k in row] for i, row in enumerate(order)]
