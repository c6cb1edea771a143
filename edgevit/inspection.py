"""``edgevit inspect``: what a ViT learned, and where INT8 hurts it.

Four figures and an HTML page: patch-embedding filters (principal components), position-embedding similarity,
mean attention distance per head and layer, and per-layer SQNR of the INT8 model against FP32 on real images."""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevit._progress import say
from edgevit.errors import UsageError, WeightsError
from edgevit.inspection_figures import draw_attention_distance, draw_filters, draw_position_similarity, draw_sqnr


# ------------------------------------------------------------------------------------------------- computations
def principal_filters(weight: np.ndarray, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal components of conv filters ``weight`` (out, 3, kh, kw) → ((k, 3, kh, kw), explained
    variance ratios)."""
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    w = w - w.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(w, full_matrices=False)
    k = min(k, vt.shape[0])
    ratio = (s**2) / max(float((s**2).sum()), 1e-12)
    return vt[:k].reshape(k, *weight.shape[1:]), ratio[:k]


def position_similarity(pos_embed: np.ndarray, grid: tuple[int, int], prefix: int) -> np.ndarray:
    """Cosine similarity of every patch position's embedding with every other: (gh, gw, gh, gw)."""
    p = pos_embed.reshape(-1, pos_embed.shape[-1])[prefix:].astype(np.float64)
    if p.shape[0] != grid[0] * grid[1]:
        raise UsageError(f"position embedding has {p.shape[0]} patch positions, grid {grid} needs {grid[0] * grid[1]}")
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return (p @ p.T).reshape(*grid, *grid)


def patch_distances(grid: tuple[int, int], patch_px: float) -> np.ndarray:
    """Euclidean distance in input pixels between the centres of every pair of patches: (N, N)."""
    ys, xs = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    c = np.stack([ys.ravel(), xs.ravel()], 1).astype(np.float64) * patch_px
    return np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))


def mean_attention_distance(attn: np.ndarray, grid: tuple[int, int], patch_px: float) -> np.ndarray:
    """Mean attention distance per head (Dosovitskiy et al. 2021): for attention probabilities over patch tokens
    ``attn`` (batch, heads, N, N), the attention-weighted distance from each query patch to the key patches, averaged
    over queries and images. Rows are renormalised over the patch keys (class tokens dropped before)."""
    a = attn.astype(np.float64)
    a = a / np.maximum(a.sum(-1, keepdims=True), 1e-12)
    d = patch_distances(grid, patch_px)
    return (a * d).sum(-1).mean(axis=(0, 2))


def sqnr_db(reference: np.ndarray, quantized: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σ ref² / Σ (ref − quantized)²)."""
    ref, q = reference.astype(np.float64), quantized.astype(np.float64)
    return _db(float((ref**2).sum()), float(((ref - q) ** 2).sum()))


# ------------------------------------------------------------------------------------------------ model probing
def first_rgb_conv(model):
    """(name, module) of the first Conv2d that reads the RGB image: the patch projection of a plain ViT, the stem
    of a hybrid or MaxViT."""
    import torch

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.in_channels == 3:
            return name, m
    return None, None


def vit_geometry(model, input_size: int) -> tuple[tuple[int, int], float, int] | None:
    """(grid, pixels per token, prefix tokens) for timm VisionTransformer-like models with absolute position
    embeddings; None otherwise."""
    pe = getattr(model, "patch_embed", None)
    if pe is None or getattr(model, "pos_embed", None) is None or not hasattr(pe, "grid_size"):
        return None
    grid = tuple(int(g) for g in pe.grid_size)
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    return grid, input_size / grid[1], prefix


def attention_maps(model, x, prefix: int) -> list[np.ndarray]:
    """Attention probabilities over patch tokens, per block: list of (batch, heads, N, N), computed from each timm
    Attention's own qkv projection, q/k norms and scale."""
    import torch

    blocks = [b.attn for b in getattr(model, "blocks", []) if hasattr(getattr(b, "attn", None), "qkv")]
    maps: list[np.ndarray] = []

    def hook(attn):
        def fn(_module, _inp, out):
            b, n, _ = out.shape
            qkv = out.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
            a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
            maps.append(a[:, :, prefix:, prefix:].numpy())
        return fn

    handles = [a.qkv.register_forward_hook(hook(a)) for a in blocks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return maps


def onnx_scope(module_name: str) -> str:
    """``blocks.0.attn.qkv`` → ``/blocks/blocks.0/attn/qkv/``, ``head`` → ``/head/``."""
    parts = module_name.split(".")
    out = []
    for i, p in enumerate(parts):
        if p.isdigit():
            out.append(f"{parts[i - 1]}.{p}")
        else:
            out.append(p)
    return "/" + "/".join(out) + "/"


@dataclass
class LayerError:
    name: str
    kind: str
    sqnr_db: float


def layer_sqnr(model, ov_model, batches) -> list[LayerError]:
    """SQNR of every Linear/Conv2d output of the INT8 OpenVINO model against the FP32 torch model, over image
    ``batches`` (float32 NCHW arrays, or one array): signal and noise are summed batch by batch, so memory does not
    grow with the number of images. Layers are matched by the ONNX scope names the exporter gives
    (``/blocks/blocks.0/attn/qkv/…``)."""
    import openvino as ov
    import torch

    wanted = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}
    ops = list(ov_model.get_ordered_ops())
    chosen: dict[str, object] | None = None
    compiled = None
    sums: dict[str, list[float]] = {}
    for x in ([batches] if isinstance(batches, np.ndarray) else batches):
        ref: dict[str, np.ndarray] = {}
        handles = [m.register_forward_hook(lambda _m, _i, o, n=n, ref=ref: ref.__setitem__(n, o.detach().numpy()))
                   for n, m in wanted.items()]
        try:
            with torch.no_grad():
                model(torch.from_numpy(x))
        finally:
            for h in handles:
                h.remove()
        if chosen is None:  # matched once, on the first batch's shapes (batch dimension aside)
            chosen = {}
            for name in wanted:
                scope = onnx_scope(name)
                cands = [op for op in ops if op.get_friendly_name().startswith(scope)
                         and op.get_type_name() in ("Add", "MatMul", "Convolution")
                         and tuple(op.get_output_partial_shape(0).get_min_shape())[1:] == tuple(ref[name].shape)[1:]]
                if cands:
                    chosen[name] = cands[-1]
            if not chosen:
                return []
            probe = ov.Model([op.output(0) for op in chosen.values()] + list(ov_model.outputs),
                             ov_model.get_parameters(), "edgevit-probe")
            compiled = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        res = compiled(x)
        for i, name in enumerate(chosen):
            r, q = ref[name].astype(np.float64), res[compiled.output(i)].astype(np.float64)
            acc = sums.setdefault(name, [0.0, 0.0])
            acc[0] += float((r ** 2).sum())
            acc[1] += float(((r - q) ** 2).sum())
    return [LayerError(name, type(wanted[name]).__name__, round(_db(*sums[name]), 2)) for name in (chosen or {})]


def _db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else 10.0 * float(np.log10(max(signal, 1e-30) / noise))


# ------------------------------------------------------------------------------------------------------ the page
@dataclass
class InspectReport:
    out: Path
    figures: dict[str, str] = field(default_factory=dict)  # key -> file name
    notes: dict[str, str] = field(default_factory=dict)  # key -> why a figure is absent, or what it shows
    worst_layers: list[LayerError] = field(default_factory=list)
    attention_distance: np.ndarray | None = None


SECTIONS = {
    "filters": "Patch-embedding filters",
    "position": "Position-embedding similarity",
    "attention": "Mean attention distance",
    "sqnr": "Per-layer quantization error",
}


SQNR_LEGEND = ("SQNR, the signal-to-quantization-noise ratio, is 10·log10(‖FP32 output‖² / ‖INT8 output − FP32 "
               "output‖²) in dB: every 6 dB halves the error. As a rule of thumb, above 30 dB a layer's INT8 error is "
               "negligible, 20–30 dB is usually harmless, and below about 20 dB the layer is a candidate to keep in "
               "higher precision. The accuracy gate of the build has the last word.")


def ignored_patterns_snippet(layers: list[LayerError]) -> str:
    """A calibration recipe line that keeps ``layers`` in higher precision: NNCF ignored-scope patterns matching the
    nodes the ONNX exporter names after each module (TOML literal strings, so the backslashes stay as they are)."""
    pats = [re.escape(onnx_scope(e.name)) + ".*" for e in layers]
    return "ignored_patterns = [" + ", ".join(f"'{p}'" for p in pats) + "]"


def _write_page(r: InspectReport, title: str) -> None:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}img{max-width:100%}"
             "td,th{padding:2px 8px;text-align:left}</style>", f"<h1>{html.escape(title)}</h1>"]
    for key, heading in SECTIONS.items():
        parts.append(f"<h2>{heading}</h2>")
        if key in r.notes:
            parts.append(f"<p>{html.escape(r.notes[key])}</p>")
        if key in r.figures:
            parts.append(f"<img src='{r.figures[key]}' alt='{heading}'>")
        if key == "sqnr" and r.worst_layers:
            parts.append("<p>Worst layers (candidates to keep in higher precision):</p><table><tr><th>layer</th>"
                         "<th>type</th><th>SQNR (dB)</th></tr>")
            parts += [f"<tr><td>{html.escape(e.name)}</td><td>{e.kind}</td><td>{e.sqnr_db:.2f}</td></tr>"
                      for e in r.worst_layers]
            parts.append("</table>")
            parts.append(f"<p>{html.escape(SQNR_LEGEND)}</p><p>To keep these layers in higher precision, copy "
                         "<code>calibration/default.toml</code>, replace its <code>ignored_patterns</code> line with "
                         "this one, and build with <code>--calibration YOUR.toml</code>:</p>"
                         f"<pre>{html.escape(ignored_patterns_snippet(r.worst_layers))}</pre>")
    from edgevit.outputs import write_text

    write_text(r.out / "index.html", "\n".join(parts) + "\n")


def inspect_model(model: str, weights: str | None, out: str | os.PathLike, *, bundle: str | None = None,
                  data: str | None = None, images: int = 64, calib_samples: int = 128,
                  input_size: int | None = None, force: bool = False, **model_overrides) -> InspectReport:
    """Write the figures and ``index.html`` into ``out`` (replaced only if it is an earlier inspect page or empty,
    unless ``force``)."""
    from edgevit.data import load_dataset, sample_indices
    from edgevit.models import data_config, resolve_spec, sha256_file
    from edgevit.outputs import check_output, output_dir
    from edgevit.prepare import load_model, read_weights

    spec = resolve_spec(model)
    check_output(Path(out), "inspect", force)
    if images < 1:
        raise UsageError("--images must be at least 1")
    w = read_weights(weights, spec) if weights else None
    manifest = None
    if bundle:
        from edgevit.runtime.bundle import read_manifest

        manifest = read_manifest(bundle)
        if manifest.backend.name != "openvino" or manifest.precision != "int8":
            raise UsageError(f"{bundle} is a {manifest.precision} {manifest.backend.name} bundle; "
                             "per-layer SQNR reads INT8 OpenVINO bundles (or omit --bundle to quantize on the fly)")
        if w and manifest.model.weights_sha256 not in (None, sha256_file(w.file)):
            raise WeightsError(f"{bundle} was built from other weights than {weights}; pass the weights it was "
                               "built from")
        data = data or manifest.validation.get("dataset")
    ds = load_dataset(data) if data else None
    classes = ds.classes if ds else (w.edgevit.get("classes") if w else None)
    size = input_size or (manifest.model.input_size[-1] if manifest else spec.input_size)
    net, _ = load_model(spec, w, classes, size, model_overrides)
    if not weights:
        say("warning: no --weights: inspecting a randomly initialised model")
    pre = data_config(spec, size, pretrained=w.hub.preprocessing_overrides() if w and w.hub else None)

    final = Path(out)
    with output_dir(final, "inspect", force) as out:
        r = InspectReport(out)

        _filters(r, net)
        geo = vit_geometry(net, size)
        _positions(r, net, geo, spec)
        x = None
        if ds:  # streamed in batches: memory does not grow with --images
            idx = sample_indices(len(ds.val), images, seed=0)
            x = _Batches(ds.stream(ds.val.subset(idx), pre), pre)
        _attention(r, net, geo, x, spec, ds, size)
        if x is None:
            r.notes["sqnr"] = "Needs --data (real images) to compare FP32 and INT8 layer outputs."
        else:
            _sqnr(r, net, x, ds, bundle if manifest else None,
                  lambda: _quantize_on_the_fly(net, pre, ds, spec, calib_samples))
        _write_page(r, f"edgevit inspect: {spec.alias}" + (f" ({Path(weights).name})" if weights else " (random init)"))
    r.out = final
    return r


def _filters(r: InspectReport, net) -> None:
    """1. The filters of the layer that reads the image."""
    name, conv = first_rgb_conv(net)
    if conv is None:
        r.notes["filters"] = "No convolution reads the RGB image in this model; nothing to draw."
        return
    comps, ratio = principal_filters(conv.weight.detach().numpy(), k=16)
    draw_filters(comps, ratio, r.out / "patch_filters.png", name)
    r.figures["filters"] = "patch_filters.png"
    r.notes["filters"] = (f"The first 16 principal components of the {conv.out_channels} filters of '{name}' "
                          f"({conv.kernel_size[0]}x{conv.kernel_size[1]}, the layer that reads the RGB image"
                          + (")." if name == "patch_embed.proj" else "; this model has a convolutional stem, "
                             "so these are the stem's filters, not a patch projection)."))


def _positions(r: InspectReport, net, geo, spec) -> None:
    """2. Position embeddings."""
    if not geo:
        r.notes["position"] = (f"{spec.alias} has no absolute position embeddings"
                               + (" (MaxViT uses relative position biases inside its windows)"
                                  if spec.family == "maxvit" else "") + "; nothing to draw.")
        return
    grid, _, prefix = geo
    sim = position_similarity(net.pos_embed.detach().numpy(), grid, prefix)
    draw_position_similarity(sim, r.out / "position_similarity.png")
    r.figures["position"] = "position_similarity.png"
    r.notes["position"] = f"{grid[0]}x{grid[1]} patch positions; learned absolute position embeddings."


class _Batches:
    """The inspection images as normalised float32 batches, decoded on each pass (an :class:`ImageStream`)."""

    def __init__(self, stream, pre, batch_size: int = 16) -> None:
        self.stream, self.pre, self.batch_size = stream, pre, batch_size

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self):
        for x, _ in self.stream.batches(self.batch_size):
            yield self.pre.normalize(x)


def _attention(r: InspectReport, net, geo, x, spec, ds, size: int) -> None:
    """3. Mean attention distance per head and layer, on real images (summed batch by batch)."""
    import torch

    if geo and x is not None:
        grid, patch_px, prefix = geo
        total, count = None, 0
        for batch in x:
            maps = attention_maps(net.eval(), torch.from_numpy(batch), prefix)
            if not maps:
                break
            d = np.stack([mean_attention_distance(a, grid, patch_px) for a in maps]) * len(batch)
            total, count = (d if total is None else total + d), count + len(batch)
        if total is not None:
            r.attention_distance = total / count
            draw_attention_distance(r.attention_distance, r.out / "attention_distance.png", size)
            r.figures["attention"] = "attention_distance.png"
            r.notes["attention"] = (f"Averaged over {count} images of {ds.spec} ({ds.val_name}); patch tokens "
                                    f"only, {patch_px:g} px per token.")
            return
    r.notes["attention"] = ("Needs --data (real images)." if x is None else
                            f"{spec.alias} has no global token attention to measure"
                            + (" (MaxViT attends within fixed windows and grids)" if spec.family == "maxvit"
                               else "") + ".")


def _sqnr(r: InspectReport, net, x, ds, bundle: str | None, quantize) -> None:
    """4. Per-layer quantization error: the bundle's INT8 IR (or one quantized now) against FP32 PyTorch."""
    import openvino as ov

    if bundle:
        ov_model = ov.Core().read_model(str(Path(bundle) / "model.xml"))
        how = f"INT8 bundle {Path(bundle).name}"
    else:
        ov_model, how = quantize()
    ov_model.reshape({ov_model.input(0).get_any_name(): ov.PartialShape([-1, 3, *x.pre.input_size])})
    errors = layer_sqnr(net, ov_model, x)
    if not errors:
        r.notes["sqnr"] = "No layer of the INT8 model could be matched to the PyTorch model by name."
        return
    draw_sqnr(errors, r.out / "layer_sqnr.png")
    r.figures["sqnr"] = "layer_sqnr.png"
    r.worst_layers = sorted(errors, key=lambda e: e.sqnr_db)[:3]
    r.notes["sqnr"] = (f"SQNR of each Linear/Conv output, {how} vs FP32 PyTorch, on {len(x)} images of "
                       f"{ds.spec}. Worst: " + ", ".join(f"{e.name} {e.sqnr_db:.1f} dB" for e in r.worst_layers) + ".")


def _quantize_on_the_fly(net, pre, ds, spec, calib_samples: int):

    import openvino as ov

    from edgevit.export import export_onnx
    from edgevit.quantize import calibration_images, load_recipe, nncf_quantize

    recipe = load_recipe(None, calib_samples)
    from edgevit.outputs import work_dir

    with work_dir() as d:
        onnx_path = export_onnx(net, pre.input_size, Path(d) / "m.onnx")
        calib, _ = calibration_images(ds, pre, recipe)
        q = nncf_quantize(ov.convert_model(str(onnx_path)), calib, recipe, spec.is_transformer)
    return q, f"INT8 quantized now with the default recipe ({len(calib)} calibration images)"

