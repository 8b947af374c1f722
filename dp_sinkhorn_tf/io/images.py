"""Pictures of generated images and of the privacy spent: one [−1, 1] → uint8 rule, tiling,
per-class grids, label histograms and the ε curve, each written atomically as a PNG
(`files`: local or any tf.io.gfile path).

Used by the trainer (sample grids), `evaluate` (samples.png, labels.png, epsilon.png),
`sample` and `fid`; it holds no evaluation logic.

  uint8 pixel = clip(round((x + 1)·127.5), 0, 255) for x ∈ [−1, 1]   (`to_uint8`; the
  exported SavedModel's `images_uint8` applies the same rule in TF: `export_lib.to_uint8`).
"""

import io
from typing import Optional, Sequence

import numpy as np

from dp_sinkhorn_tf.io import files


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[…] floats in [−1, 1] → uint8 clip(round((x + 1)·127.5), 0, 255) (round half to even)."""
  pixels = np.clip(np.round((np.asarray(images, np.float64) + 1.0) * 127.5), 0, 255)
  return pixels.astype(np.uint8)


def per_class_examples(images: np.ndarray, labels: np.ndarray, num_classes: int,
                       per_class: int) -> np.ndarray:
  """[K·per_class, H, W, C]: the first `per_class` images of each class in order (blank −1
  images fill a class that has fewer), the layout `tile_rows` expects."""
  out = np.full((num_classes * per_class,) + images.shape[1:], -1.0, np.float32)
  for k in range(num_classes):
    chosen = images[labels == k][:per_class]
    out[k * per_class:k * per_class + len(chosen)] = chosen
  return out


def save_figure_atomic(fig, path: str) -> str:
  """The figure as a PNG, written atomically (`files`: local or any tf.io.gfile path)."""
  import matplotlib.pyplot as plt

  buf = io.BytesIO()
  try:
    fig.savefig(buf, bbox_inches="tight", format="png")
  finally:
    plt.close(fig)
  files.write_bytes_atomic(path, buf.getvalue())
  return path


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


# Width (pixels) of the grey lines between the tiles of a sample grid.
GRID_PAD = 1


def tile_rows(images: np.ndarray, rows: int, pad: int = GRID_PAD) -> np.ndarray:
  """[rows·cols, H, W, C] in [−1, 1] (row-major) → uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, C].

  Pixel round((x + 1)·127.5) clipped to 0..255; the tiles are separated (and framed) by
  `pad`-pixel lines of mid-grey 128, so that small dark-background images such as 8×8 digits
  do not run into each other. pad=0 gives the bare mosaic.
  """
  k, h, w, c = images.shape
  if rows < 1 or k % rows:
    raise ValueError(f"{k} images do not fill {rows} rows")
  if pad < 0:
    raise ValueError(f"pad must be ≥ 0, got {pad}")
  cols = k // rows
  pixels = to_uint8(images).astype(np.int64)
  framed = np.pad(pixels.reshape(rows, cols, h, w, c),
                  [(0, 0), (0, 0), (pad, 0), (pad, 0), (0, 0)], constant_values=128)
  grid = framed.transpose(0, 2, 1, 3, 4).reshape(rows * (h + pad), cols * (w + pad), c)
  grid = np.pad(grid, [(0, pad), (0, pad), (0, 0)], constant_values=128)
  return grid.astype(np.uint8)


def tile_row_centres(rows: int, height: int, pad: int = GRID_PAD) -> list:
  """The pixel row at the centre of each tile row of `tile_rows(…, pad)` (for axis labels)."""
  return [pad + i * (height + pad) + (height - 1) / 2 for i in range(rows)]


def save_class_grid_png(images: np.ndarray, labels: np.ndarray, label_names: Sequence[str],
                        path: str, per_class: int = 10, title: Optional[str] = None) -> str:
  """One row per class (named on the left) of its first `per_class` images."""
  plt = _pyplot()
  k = len(label_names)
  grid = tile_rows(per_class_examples(images, labels, k, per_class), k)
  height = images.shape[1]
  fig, ax = plt.subplots(figsize=(6.0, 6.0 * grid.shape[0] / grid.shape[1] + 0.4), dpi=100)
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
            interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks(tile_row_centres(k, height))
  ax.set_yticklabels(label_names, fontsize=7)
  for side in ax.spines.values():
    side.set_visible(False)
  if title:
    ax.set_title(title, fontsize=8)
  return save_figure_atomic(fig, path)


def save_label_histogram_png(labels: np.ndarray, label_names: Sequence[str], path: str,
                             reference_labels: Optional[np.ndarray] = None,
                             title: Optional[str] = None) -> str:
  """Bar chart of the fraction of each class in `labels` (and in `reference_labels`)."""
  plt = _pyplot()
  k = len(label_names)
  x = np.arange(k)
  width = 0.4 if reference_labels is not None else 0.8
  fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * k + 1.5), 3.0), dpi=100)
  frac = np.bincount(labels, minlength=k)[:k] / max(1, len(labels))
  ax.bar(x - (width / 2 if reference_labels is not None else 0), frac, width,
         label=f"evaluated (N={len(labels)})")
  if reference_labels is not None:
    ref = np.bincount(reference_labels, minlength=k)[:k] / max(1, len(reference_labels))
    ax.bar(x + width / 2, ref, width, label=f"real test split (N={len(reference_labels)})")
  ax.set_xticks(x)
  ax.set_xticklabels(label_names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center",
                     fontsize=7)
  ax.set_ylabel("fraction")
  ax.legend(fontsize=7)
  if title:
    ax.set_title(title, fontsize=8)
  return save_figure_atomic(fig, path)


def save_epsilon_plot_png(ledger, curve, path: str) -> str:
  """ε(t) of `curve` = (steps, ε) as `accounting.epsilon_curve(ledger, n)` gives it (the
  caller computes it: io sits below privacy); the ledger names δ, the accountant, q and σ."""
  plt = _pyplot()
  steps, eps = curve
  fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=100)
  ax.plot(steps, eps, marker=".", markersize=3)
  ax.set_xlabel("training step")
  ax.set_ylabel("ε")
  ax.set_title(f"ε at δ={ledger.delta:g} ({ledger.accountant}; q={ledger.sample_rate:.3g}, "
               f"σ={ledger.noise_multiplier:.3g})", fontsize=8)
  ax.grid(alpha=0.3)
  return save_figure_atomic(fig, path)
