"""Input-gradient methods: their registry entries, sampling the inputs and reducing the gradients.

The gradients themselves come from the augmented model (gradcam_input_gradient,
gradcam_guided_gradient); nothing here knows about ONNX.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from ..errors import InputError
from ..graph.augment import ACTIVATION, GRADIENT, GUIDED_GRADIENT, INPUT_GRADIENT
from .methods import Family, Method, Samples, register
from .reference import heatmaps, normalize


def attribution_heatmaps(attribution: np.ndarray) -> np.ndarray:
    """[N,C,H,W] attribution -> [N,H,W] float32 map in [0,1]: |a| summed over channels, min-max."""
    return normalize(np.abs(attribution.astype(np.float32, copy=False)).sum(axis=1))


def guided_gradcam(guided_gradient: np.ndarray, cam_heatmaps: np.ndarray) -> np.ndarray:
    """Guided Grad-CAM attribution [N,C,H,W]: guided backprop times the upsampled Grad-CAM map."""
    return guided_gradient * cam_heatmaps[:, None].astype(guided_gradient.dtype)


def smoothgrad_inputs(batch: np.ndarray, samples: int, noise_level: float, seed: int) -> np.ndarray:
    """[N*S, ...] noisy copies of each image, noise std = noise_level * (max - min) of that image."""
    if samples < 1 or noise_level < 0:
        raise InputError(f"smoothgrad needs samples >= 1 and noise_level >= 0, got {samples}, {noise_level}")
    spread = (batch.max(axis=tuple(range(1, batch.ndim))) - batch.min(axis=tuple(range(1, batch.ndim))))
    sigma = (noise_level * spread).reshape((-1, 1) + (1,) * (batch.ndim - 1)).astype(np.float32)
    noise = np.random.default_rng(seed).standard_normal((len(batch), samples) + batch.shape[1:], np.float32)
    return (batch[:, None] + sigma * noise).reshape((-1,) + batch.shape[1:])


def smoothgrad(gradients: np.ndarray, samples: int) -> np.ndarray:
    """Mean absolute gradient over each image's noise samples: [N*S,C,H,W] -> [N,C,H,W]."""
    return np.abs(gradients.reshape((-1, samples) + gradients.shape[1:])).mean(axis=1)


def path_points(steps: int, rule: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Points alpha in (0,1] and weights of the integral over the straight path (as Captum's rules)."""
    if steps < 1:
        raise InputError(f"integrated gradients needs steps >= 1, got {steps}")
    if rule == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(steps)
        return (points + 1) / 2, weights / 2
    if rule == "riemann_trapezoid":
        points = np.linspace(0, 1, steps)
        weights = np.full(steps, 1 / (steps - 1)) if steps > 1 else np.ones(1)
        weights[[0, -1]] /= 2 if steps > 1 else 1
        return points, weights
    if rule in ("riemann_left", "riemann_right", "riemann_middle"):
        offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
        return (np.arange(steps) + offset) / steps, np.full(steps, 1 / steps)
    raise InputError(f"unknown integration rule {rule!r}; use gausslegendre, riemann_trapezoid, "
                     "riemann_left, riemann_right or riemann_middle")


def integrated_gradients_inputs(batch: np.ndarray, baseline: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[N*S, ...] inputs along the straight path from baseline to each image."""
    alphas = points.astype(np.float32).reshape((1, -1) + (1,) * (batch.ndim - 1))
    return (baseline[:, None] + alphas * (batch - baseline)[:, None]).reshape((-1,) + batch.shape[1:])


def integrated_gradients(gradients: np.ndarray, weights: np.ndarray, difference: np.ndarray) -> np.ndarray:
    """(image - baseline) times the weighted path integral of the gradients: [N*S,...] -> [N,...]."""
    per_image = gradients.reshape((-1, len(weights)) + gradients.shape[1:]).astype(np.float64)
    integral = np.einsum("ns...,s->n...", per_image, weights)
    return (difference * integral).astype(np.float32)


# ---------------------------------------------------------------- registry entries

def _smoothgrad_sample(batch: np.ndarray, layout: str, samples: int, noise_level: float, seed: int) -> Samples:
    return Samples(smoothgrad_inputs(batch, samples, noise_level, seed), samples)


def _integrated_gradients_sample(batch: np.ndarray, layout: str, steps: int,
                                 baseline: Optional[np.ndarray]) -> Samples:
    points, weights = path_points(steps)
    start = np.zeros_like(batch) if baseline is None else np.broadcast_to(np.asarray(baseline, np.float32),
                                                                          batch.shape)
    difference = batch - start
    if layout == "NHWC":  # the input gradients are NCHW whatever the model's layout
        difference = difference.transpose(0, 3, 1, 2)
    return Samples(integrated_gradients_inputs(batch, start, points), steps, (weights, difference))


def _guided_gradcam(outputs: Mapping[str, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    return guided_gradcam(outputs[GUIDED_GRADIENT], heatmaps(outputs[ACTIVATION], outputs[GRADIENT], "gradcam", size))


for _entry in (
    Method("saliency", Family.INPUT_GRADIENT, (INPUT_GRADIENT,), aliases=("vanillasaliency",),
           attribute=lambda outputs, size: outputs[INPUT_GRADIENT], summary="d score / d image"),
    Method("guided_backprop", Family.INPUT_GRADIENT, (GUIDED_GRADIENT,), aliases=("guidedbackpropagation",),
           attribute=lambda outputs, size: outputs[GUIDED_GRADIENT],
           summary="d score / d image through guided-backprop ReLUs"),
    Method("guided_gradcam", Family.INPUT_GRADIENT, (GUIDED_GRADIENT, ACTIVATION, GRADIENT),
           attribute=_guided_gradcam, summary="guided backprop times the upsampled Grad-CAM map"),
    Method("smoothgrad", Family.INPUT_GRADIENT, (INPUT_GRADIENT,),
           options={"samples": 16, "noise_level": 0.15, "seed": 0}, sample=_smoothgrad_sample,
           combine=lambda gradients, drawn: smoothgrad(gradients, drawn.repeat),
           summary="mean |d score / d image| over noisy copies (noise std = noise_level * value range)"),
    Method("integrated_gradients", Family.INPUT_GRADIENT, (INPUT_GRADIENT,), aliases=("ig",),
           options={"steps": 32, "baseline": None}, sample=_integrated_gradients_sample,
           combine=lambda gradients, drawn: integrated_gradients(gradients, *drawn.context),
           summary="(image - baseline) times the path integral of the gradient (Gauss-Legendre steps)"),
):
    register(_entry)
