"""Training reports: metrics.jsonl + TensorBoard, progress lines, image grids, metric plots.

Layout under a run's workdir, local or `gs://` (written by the chief process only, through
`etils.epath`, see `jaxaug.storage`):

  metrics.jsonl               one JSON object per `Reporter.write` call:
                              {"step": int, "split": str, <name>: float | null, ...}
  tensorboard/                TensorBoard event files: scalars "<split>/<name>", image grids
  images/<name>_step<step:07d>.png
  plots/training.png          loss and accuracy of train, val and test against epoch
                              (`Reporter.plot_training`)
  plots/<filename>            learned-parameter curves (`Reporter.plot_metrics`), and one
                              figure per learned vector (`Reporter.plot_vectors`), each on
                              the fixed scale `SCALES` gives it, its identity a dashed line
  results.json                final results (`write_results`)

metrics.jsonl is rewritten whole (an object store cannot append) from the records the
`Reporter` keeps: by the first record `flush_seconds` or more after the last rewrite, and
at `flush` / `close`.
Non-finite metric values are stored as JSON `null` so that every line is valid JSON;
`read_metrics` returns them as None. What a method has learned is written by
`Reporter.write_learned` as records of split "learned": scalars under their names, the
components of a vector as "<name>[<label>]".
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from etils import epath
import jax
import numpy as np
import tensorboardX
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from jaxaug import storage

MetricValue = float | np.ndarray | jax.Array

METRICS_FILENAME = "metrics.jsonl"
RESULTS_FILENAME = "results.json"
CONFIG_FILENAME = "config.json"
_RESERVED_KEYS = ("step", "split")
EVALUATION_SPLITS = ("val", "test")  # the records a finished run evaluated again writes anew
# Images are upscaled (nearest neighbour, integer factor) until their longer side reaches this.
_MIN_DISPLAY_SIZE = 96
_GRID_GAP = 2  # pixels between images and between rows
_LABEL_PADDING = 4  # pixels either side of a row label
_BACKGROUND = 255  # white


def _json_float(value: float) -> float | None:
  """`value` if finite, else None (JSON null): keeps every line strict JSON."""
  return value if math.isfinite(value) else None


def _check_metrics(metrics: Mapping[str, Any]) -> None:
  """ValueError unless names are strings other than "step"/"split" and values hold one number.

  A value holds one number if it is a scalar or a size-1 array. Only shapes are read, so jax
  arrays are not copied to the host.
  """
  for name, value in metrics.items():
    if not isinstance(name, str) or name in _RESERVED_KEYS:
      raise ValueError(f"metric names must be strings other than {_RESERVED_KEYS}, got {name!r}")
    shape = np.shape(value)
    if math.prod(shape) != 1:
      raise ValueError(f"metric {name!r} must be a scalar or a size-1 array, got shape {shape}")


def _to_python_float(name: str, value: Any) -> float:
  """A one-number metric (python/numpy/jax scalar or size-1 array) as a python float.

  Raises ValueError naming `name` and the value if it is not a number.
  """
  try:
    return float(np.asarray(value).reshape(()))
  except (TypeError, ValueError) as error:
    raise ValueError(f"metric {name!r} is not a number: {value!r}") from error


def _metrics_path(workdir: str) -> epath.Path:
  return epath.Path(workdir) / METRICS_FILENAME


def _record_line(record: Mapping[str, Any]) -> str:
  """One metrics.jsonl line (with newline); raises if a value is not strict JSON."""
  return json.dumps(record, allow_nan=False) + "\n"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Parses `<workdir>/metrics.jsonl` into a list of records, in file order.

  Each record is {"step": int, "split": str, <metric name>: float | None}; None marks a
  non-finite value. A last line cut off by a killed process (no trailing newline, not valid
  JSON) is skipped; any other malformed line raises ValueError naming its line number.
  Raises FileNotFoundError if the file does not exist.
  """
  path = _metrics_path(workdir)
  lines = path.read_text().splitlines(keepends=True)
  records = []
  for number, line in enumerate(lines, start=1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number == len(lines) and not line.endswith("\n"):
        break
      raise ValueError(f"{path}:{number} is not a JSON line: {line!r}") from error
  return records


def _records_to_keep(workdir: str, last_step: int, *, final: bool) -> list[dict[str, Any]]:
  """The records of metrics.jsonl (none if it does not exist) with step <= `last_step`.

  `final`: `last_step` is the last step, whose evaluation (the 'val' and 'test' records)
  is done again, so those records are left out too.
  """
  if not _metrics_path(workdir).exists():
    return []
  return [record for record in read_metrics(workdir)
          if record["step"] < last_step
          or (record["step"] == last_step
              and not (final and record["split"] in EVALUATION_SPLITS))]


def _to_json_value(value: Any) -> Any:
  """`value` with numpy/jax arrays and scalars turned into python lists and scalars.

  Mappings (keys become str) and lists/tuples are converted recursively; non-finite floats
  become None. Raises ValueError for objects that have no JSON form.
  """
  if isinstance(value, Mapping):
    return {str(key): _to_json_value(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json_value(item) for item in value]
  if hasattr(value, "__array__"):  # numpy/jax arrays and numpy scalars
    return _to_json_value(np.asarray(value).tolist())
  if isinstance(value, float):
    return _json_float(value)
  if value is None or isinstance(value, (bool, int, str)):
    return value
  raise ValueError(f"cannot write {type(value).__name__} {value!r} as JSON")


def _write_json(workdir: str, filename: str, value: Any) -> str:
  """Writes `value` (see `_to_json_value`) as indented JSON to `<workdir>/<filename>`, whole."""
  text = json.dumps(_to_json_value(value), indent=2, allow_nan=False)
  return storage.write_file(epath.Path(workdir) / filename, text + "\n")


def write_results(workdir: str, results: Mapping[str, Any]) -> str:
  """Writes `results` as indented JSON to `<workdir>/results.json`; returns the path.

  Nested mappings, lists, python/numpy/jax scalars and arrays are accepted (arrays become
  nested lists, non-finite floats null). The file is replaced atomically.
  """
  return _write_json(workdir, RESULTS_FILENAME, results)


def write_config(workdir: str, config: Mapping[str, Any]) -> str:
  """Writes a run's configuration (e.g. `ConfigDict.to_dict()`) to `<workdir>/config.json`.

  Tuples become lists. Returns the path; the file is replaced atomically.
  """
  return _write_json(workdir, CONFIG_FILENAME, config)


def read_json(workdir: str, filename: str) -> dict[str, Any] | None:
  """The JSON object in `<workdir>/<filename>`, or None if the file does not exist."""
  path = epath.Path(workdir) / filename
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path} is not valid JSON: {error}") from error


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested mappings -> {"dotted.key": leaf}; lists and scalars are leaves."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """'key: old -> new' for every dotted key whose value differs between two nested configs.

  Compared in their JSON form (tuples equal lists); a key missing on one side shows as
  `<absent>`. Sorted by key.
  """
  old_flat, new_flat = flatten(_to_json_value(old)), flatten(_to_json_value(new))
  absent = "<absent>"
  return [f"{key}: {old_flat.get(key, absent)!r} -> {new_flat.get(key, absent)!r}"
          for key in sorted(old_flat.keys() | new_flat.keys())
          if old_flat.get(key, absent) != new_flat.get(key, absent)]


def say(text: str, *, file: TextIO | None = None) -> None:
  """Prints `text` and a newline to `file` (default: `sys.stdout` at the time of the call) and
  flushes it, so a pipe or a log file gets the line when it is printed.

  Output never stops a run: a stream that fails (a pipe whose reader has gone, e.g. a `tee`
  killed by Ctrl-C; a terminal that was closed; a closed file) is ignored, and its file
  descriptor is pointed at os.devnull so that Python's own flush at exit cannot fail either
  (which would end the process with status 120).
  """
  stream = sys.stdout if file is None else file
  try:
    print(text, file=stream, flush=True)
  except (OSError, ValueError):  # ValueError: the file object was closed
    _discard_output(stream)


def _discard_output(stream: TextIO) -> None:
  """Sends what is written to `stream`'s file descriptor from now on to os.devnull (nothing
  if it has none, such as an io.StringIO or a closed file)."""
  try:
    descriptor = stream.fileno()
  except (OSError, ValueError):
    return
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, descriptor)
  finally:
    os.close(devnull)


def format_duration(seconds: float) -> str:
  """Seconds as "54s", "3m54s" or "2h05m09s" (rounded to whole seconds)."""
  total = round(seconds)
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m{secs:02d}s"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


def _format_rate(steps_per_second: float) -> str:
  """One decimal from 1 step/s up, three significant digits below (slow runs stay legible)."""
  return f"{steps_per_second:.1f}" if steps_per_second >= 1 else f"{steps_per_second:.3g}"


def format_evaluation(step: int, results: Mapping[str, Mapping[str, float]]) -> str:
  """One line for an evaluation, e.g. 'step 1500  val accuracy 61.25% loss 1.4113  |  test
  accuracy 60.59% loss 1.3744'; `results` maps a split to its accuracy and loss."""
  parts = [f"{split} accuracy {values['accuracy']:.2%} loss {values['loss']:.4f}"
           for split, values in results.items()]
  return f"step {step}  " + "  |  ".join(parts)


def format_progress(
    step: int, total_steps: int, steps_per_second: float | None, metrics: Mapping[str, Any]
) -> str:
  """The progress line, e.g. "step 120/3000 (4.0%)  12.3 steps/s  ETA 3m54s  loss=1.234".

  `steps_per_second` None (no time has passed) prints "--" for the rate and the ETA.
  Metric values are shown with 4 significant digits.
  """
  parts = [f"step {step}/{total_steps} ({100 * step / total_steps:.1f}%)"]
  if steps_per_second is None:
    parts += ["-- steps/s", "ETA --"]
  else:
    eta_seconds = max(total_steps - step, 0) / steps_per_second
    parts += [f"{_format_rate(steps_per_second)} steps/s", f"ETA {format_duration(eta_seconds)}"]
  if metrics:
    parts.append(" ".join(f"{name}={float(value):.4g}" for name, value in metrics.items()))
  return "  ".join(parts)


def _to_rgb_uint8(images: Any, index: int) -> np.ndarray:
  """Row `index` of a grid, float [N, H, W, C in {1, 3}] in [0, 1], as uint8 [N, H, W, 3].

  Values are clipped to [0, 1] (NaN shown as 0) and rounded to the nearest of 256 levels.
  """
  images = np.asarray(images, dtype=np.float32)
  if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] not in (1, 3):
    raise ValueError(f"grid row {index} must be [N>0, H, W, C in (1, 3)], got shape {images.shape}")
  images = np.clip(np.nan_to_num(images), 0.0, 1.0)
  return np.broadcast_to(np.round(images * 255).astype(np.uint8), images.shape[:3] + (3,))


def display_scale(height: int, width: int) -> int:
  """Integer nearest-neighbour upscaling factor so the longer side reaches 96 pixels (>= 1)."""
  return max(1, math.ceil(_MIN_DISPLAY_SIZE / max(height, width)))


def make_image_grid(rows: Sequence[Any], row_labels: Sequence[str]) -> np.ndarray:
  """Lays image rows out as one uint8 RGB picture [height, width, 3].

  Args:
    rows: each a float array [N, H, W, C] in [0, 1] with C in (1, 3); N, H and W may differ
      between rows (e.g. originals and their random-resized crops). Row i becomes grid row i,
      images left to right.
    row_labels: one label per row, drawn in a column on the left; the column is left out if
      every label is empty.

  Cells are as large as the largest H and W; every image is upscaled by the same
  `display_scale(H, W)` of those (nearest neighbour), so sizes compare, and centred in its
  cell. Cells are separated by 2 white pixels; the label column, when present, is the widest
  label plus 4 pixels either side.
  """
  if not rows or len(rows) != len(row_labels):
    raise ValueError(f"need one label per row and at least one row, got {len(rows)} rows "
                     f"and labels {list(row_labels)}")
  rows = [_to_rgb_uint8(images, index) for index, images in enumerate(rows)]
  height = max(images.shape[1] for images in rows)
  width = max(images.shape[2] for images in rows)
  scale = display_scale(height, width)
  cell_height, cell_width = height * scale, width * scale

  font = ImageFont.load_default()
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  label_widths = [measure.textlength(label, font=font) for label in row_labels]
  label_column = math.ceil(max(label_widths)) + 2 * _LABEL_PADDING if any(row_labels) else 0
  columns = max(images.shape[0] for images in rows)
  grid = np.full(
      (len(rows) * (cell_height + _GRID_GAP) - _GRID_GAP,
       label_column + columns * (cell_width + _GRID_GAP) - _GRID_GAP, 3),
      _BACKGROUND, np.uint8)
  for row_index, images in enumerate(rows):
    top = row_index * (cell_height + _GRID_GAP)
    upscaled = images.repeat(scale, axis=1).repeat(scale, axis=2)
    image_height, image_width = upscaled.shape[1:3]
    image_top = top + (cell_height - image_height) // 2
    for column_index, image in enumerate(upscaled):
      left = (label_column + column_index * (cell_width + _GRID_GAP)
              + (cell_width - image_width) // 2)
      grid[image_top:image_top + image_height, left:left + image_width] = image

  picture = Image.fromarray(grid)
  draw = ImageDraw.Draw(picture)
  for row_index, label in enumerate(row_labels):
    _, text_top, _, text_bottom = draw.textbbox((0, 0), label, font=font)
    center_y = row_index * (cell_height + _GRID_GAP) + cell_height / 2
    draw.text((_LABEL_PADDING, center_y - (text_top + text_bottom) / 2), label,
              fill=(0, 0, 0), font=font)
  return np.asarray(picture)


def _png(picture: Figure | Image.Image) -> bytes:
  """A matplotlib figure (at 100 dpi) or a PIL image encoded as PNG."""
  buffer = io.BytesIO()
  if isinstance(picture, Figure):
    picture.savefig(buffer, format="png", dpi=100)
  else:
    picture.save(buffer, format="PNG")
  return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Scale:
  """How a learned quantity is drawn.

  Attributes:
    limits: the smallest y range shown (values beyond widen it), in the quantity's unit;
      for a distance (`side` set) in fractions of that image side.
    identity: the value that leaves images unchanged, drawn as a dashed line (None: no
      such value), in the unit the quantity is stored in.
    unit: the y-axis label.
    side: the image side a distance is measured along, "width", "height" or "side" (their
      mean); None for a quantity that is not a distance. Distances are drawn in pixels.
    normalised: whether a distance is stored in normalised image coordinates (-1 to 1
      across the image: pixels = value * side / 2) rather than in pixels.
  """
  limits: tuple[float, float]
  identity: float | None = None
  unit: str = ""
  side: str | None = None
  normalised: bool = True


# Quantity (a learned scalar's name less "_mean", or a learned vector's name, matched whole)
# -> its Scale; the first match wins, a name nothing matches is auto-scaled. The augmenter's
# limits are its default bounds (config.bilevel.augmenter.bounds): max_translation 0.25
# normalised (an eighth of the side: 4 px on 32), max_linear 0.25, max_brightness 0.2,
# max_contrast and max_saturation 0.3, max_hue 0.05.
SCALES: tuple[tuple[str, Scale], ...] = (
    (r"aug/translation_x", Scale((-1 / 8, 1 / 8), 0.0, "px", side="width")),
    (r"aug/translation_y", Scale((-1 / 8, 1 / 8), 0.0, "px", side="height")),
    (r"aug/translation_norm", Scale((0.0, 1 / 8), 0.0, "px", side="side")),
    (r"aug/displacement_px", Scale((0.0, 1 / 8), 0.0, "px", side="side", normalised=False)),
    (r"aug/linear_(xx|yy)", Scale((0.75, 1.25), 1.0, "scale factor")),
    (r"aug/linear_(xy|yx)", Scale((-0.25, 0.25), 0.0, "shear")),
    (r"aug/linear_deviation", Scale((0.0, 0.25), 0.0, "|A - I| per entry")),
    (r"aug/brightness", Scale((-0.2, 0.2), 0.0, "intensity delta")),
    (r"aug/(contrast|saturation)", Scale((0.7, 1.3), 1.0, "factor")),
    (r"aug/hue", Scale((-0.05, 0.05), 0.0, "hue delta (turns)")),
    (r"hba/(mean_)?probability", Scale((0.0, 1.0), 0.0, "probability")),
    (r"hba/(mean_)?magnitude_position", Scale((0.0, 1.0), None, "position in the range")),
    (r".*probability|.*_share", Scale((0.0, 1.0), None, "probability")),
    (r"ohl/relative_entropy", Scale((0.0, 1.0), None, "entropy / uniform's")),
    (r"ohl/reward", Scale((0.0, 1.0), None, "validation accuracy")),
)


@dataclasses.dataclass(frozen=True)
class AxisScale:
  """A quantity's y axis: drawn value = stored value * `factor`; `limits` (None: auto) and
  `identity` (None: none) in drawn units."""
  factor: float = 1.0
  limits: tuple[float, float] | None = None
  identity: float | None = None
  unit: str = ""


def axis_scale(quantity: str, image_shape: tuple[int, int] | None = None) -> AxisScale:
  """The y axis of `quantity` from `SCALES`, distances in pixels of an image of
  `image_shape` (height, width); a distance without `image_shape` keeps its stored unit
  and is auto-scaled, and a quantity `SCALES` does not name is auto-scaled."""
  scale = next((scale for pattern, scale in SCALES if re.fullmatch(pattern, quantity)), None)
  if scale is None:
    return AxisScale()
  if scale.side is None:
    return AxisScale(1.0, scale.limits, scale.identity, scale.unit)
  if image_shape is None:
    return AxisScale(1.0, None, scale.identity,
                     "normalised (1: half the side)" if scale.normalised else scale.unit)
  height, width = image_shape
  side = {"width": width, "height": height, "side": (height + width) / 2}[scale.side]
  factor = side / 2 if scale.normalised else 1.0
  identity = None if scale.identity is None else scale.identity * factor
  return AxisScale(factor, (scale.limits[0] * side, scale.limits[1] * side), identity,
                   scale.unit)


def y_limits(limits: tuple[float, float], values: Sequence[float],
             margin: float = 0.03) -> tuple[float, float]:
  """`limits` widened to take in every finite one of `values`, then by `margin` of that
  span either side (so that a line at a limit, e.g. the identity 0, stays in view)."""
  finite = [value for value in values if math.isfinite(value)]
  low, high = min([limits[0], *finite]), max([limits[1], *finite])
  return low - margin * (high - low), high + margin * (high - low)


def _series(records: Sequence[Mapping[str, Any]], name: str,
            split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the records of `split` (None: any) holding `name`; null is NaN."""
  points = [(record["step"], math.nan if record[name] is None else record[name])
            for record in records
            if name in record and (split is None or record["split"] == split)]
  steps, values = zip(*points) if points else ((), ())
  return np.asarray(steps, float), np.asarray(values, float)


def _draw_series(axis, steps: np.ndarray, values: np.ndarray,
                 spreads: np.ndarray | None = None, **style) -> None:
  """`values` against `steps` with `spreads` either side (None: none), in `style`.

  Two or more points: a line and a shaded band. Fewer (a run with one logged point): a
  marker with error bars, which a line of one point would not show.
  """
  if len(steps) < 2:
    axis.errorbar(steps, values, yerr=spreads, capsize=3,
                  **{**style, "marker": "o", "markersize": 6, "linestyle": "none"})
  else:
    (line,) = axis.plot(steps, values, **style)
    if spreads is not None:
      axis.fill_between(steps, values - spreads, values + spreads, color=line.get_color(),
                        alpha=0.2, linewidth=0)


def _finish_axis(axis, scale: AxisScale, drawn: Sequence[float]) -> None:
  """The identity as a dashed line, the fixed limits widened to `drawn`, the unit."""
  if scale.identity is not None:
    axis.axhline(scale.identity, color="black", linestyle="--", linewidth=1,
                 label="identity")
  if scale.limits is not None:
    axis.set_ylim(*y_limits(scale.limits, drawn))
  axis.set_ylabel(scale.unit)
  axis.set_xlabel("step")
  axis.grid(alpha=0.3)


def metric_panels(names: Sequence[str]) -> list[tuple[str, str, str | None]]:
  """(quantity, name, spread name or None) per subplot: "<q>_mean" and "<q>_std" share the
  subplot of quantity <q> (the mean a line, the standard deviation a band about it); any
  other name is a quantity of its own."""
  panels = []
  for name in names:
    quantity = name.removesuffix("_mean")
    spread = quantity + "_std" if name.endswith("_mean") else None
    if spread in names:
      panels.append((quantity, name, spread))
    elif not (name.endswith("_std") and name.removesuffix("_std") + "_mean" in names):
      panels.append((quantity, name, None))
  return panels


def metrics_figure(records: Sequence[Mapping[str, Any]], names: Sequence[str],
                   image_shape: tuple[int, int] | None = None) -> Figure:
  """One subplot per `metric_panels` quantity (grid layout) against step, one line per
  split, on its `axis_scale`."""
  panels = metric_panels(names)
  columns = math.ceil(math.sqrt(len(panels)))
  grid_rows = math.ceil(len(panels) / columns)
  figure = Figure(figsize=(4 * columns, 3 * grid_rows), layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.subplots(grid_rows, columns, squeeze=False).ravel()
  for axis, (quantity, name, spread) in zip(axes, panels):
    scale = axis_scale(quantity, image_shape)
    splits = dict.fromkeys(record["split"] for record in records if name in record)
    drawn = []
    for split in splits:
      steps, values = _series(records, name, split)
      spreads = None if spread is None else _series(records, spread, split)[1]
      values = values * scale.factor
      spreads = None if spreads is None else spreads * scale.factor
      _draw_series(axis, steps, values, spreads, marker=".", markersize=4, label=split)
      drawn += [*values] if spreads is None else [*(values - spreads), *(values + spreads)]
    axis.set_title(quantity + (" (mean ± sd)" if spread else ""))
    _finish_axis(axis, scale, drawn)
    if len(splits) > 1:
      axis.legend()
  for axis in axes[len(panels):]:
    axis.set_visible(False)
  if any(axis_scale(quantity).identity is not None for quantity, _, _ in panels):
    figure.suptitle("dashed: the identity (leaves images unchanged)", fontsize="small")
  return figure


def vector_figure(records: Sequence[Mapping[str, Any]], name: str,
                  labels: Sequence[str]) -> Figure:
  """The components "<name>[<label>]" of a learned vector against step, one labelled line
  each, on its `axis_scale`."""
  figure = Figure(figsize=(10, 5), layout="constrained")
  FigureCanvasAgg(figure)
  axis = figure.subplots()
  scale = axis_scale(name)
  drawn = []
  for index, label in enumerate(labels):
    steps, values = _series(records, f"{name}[{label}]")
    if len(steps):
      _draw_series(axis, steps, values, color=f"C{index % 10}",
                   linestyle=("-", "--", ":")[index // 10 % 3], label=label)
      drawn += [*values]
  axis.set_title(name)
  _finish_axis(axis, scale, drawn)
  axis.legend(fontsize="x-small", ncol=max(1, math.ceil(len(labels) / 16)),
              loc="center left", bbox_to_anchor=(1.0, 0.5))
  return figure


TRAINING_SPLITS = ("train", "val", "test")


def training_curves(records: Sequence[Mapping[str, Any]]
                    ) -> tuple[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
  """The loss and accuracy curves of a run's metrics.jsonl records.

  Returns:
    (x label, {"loss" | "accuracy": {split: (x, values)}}) for the splits of
    `TRAINING_SPLITS` that have the metric: "train" the means logged every
    `log_every_steps`, "val" and "test" each evaluation on the whole split. x is the epoch
    when the train records give it ("epoch" over "step"), else the step.
  """
  epochs = [record["epoch"] / record["step"] for record in records
            if record["split"] == "train" and record.get("epoch") and record["step"]]
  per_step, label = (epochs[-1], "epoch") if epochs else (1.0, "step")
  curves = {}
  for metric in ("loss", "accuracy"):
    curves[metric] = {}
    for split in TRAINING_SPLITS:
      steps, values = _series(records, metric, split)
      if len(steps):
        curves[metric][split] = (steps * per_step, values)
  return label, curves


TRAINING_LIMITS = {"loss": (0.0, 0.0), "accuracy": (0.0, 1.0)}  # widened to the values


def training_figure(records: Sequence[Mapping[str, Any]]) -> Figure:
  """Loss (from 0) and accuracy (0 to 1) against epoch, one line per split."""
  label, curves = training_curves(records)
  figure = Figure(figsize=(10, 4), layout="constrained")
  FigureCanvasAgg(figure)
  for axis, (metric, by_split) in zip(figure.subplots(1, 2), curves.items()):
    for split, (x, values) in by_split.items():
      _draw_series(axis, x, values, color=f"C{TRAINING_SPLITS.index(split)}", marker=".",
                   label=split)
    axis.set_title(metric)
    axis.set_xlabel(label)
    axis.set_ylim(*y_limits(TRAINING_LIMITS[metric],
                            [value for _, values in by_split.values() for value in values]))
    axis.grid(alpha=0.3)
    if by_split:
      axis.legend()
  return figure


class Reporter:
  """Writes a run's metrics, progress, image grids and plots under `workdir`.

  Only the chief process (`is_chief=True`) writes or prints; on other processes every method
  is a no-op apart from validating its arguments. Metric values are python/numpy/jax scalars
  or size-1 arrays. The records are kept in memory and metrics.jsonl is rewritten whole from
  them (an object store cannot append); it and the TensorBoard events are written out when
  a `write` comes `flush_seconds` or more after they last were, and at `flush` and `close`.

  Args:
    workdir: run directory, local or a URL such as `gs://bucket/run` (created if missing).
    total_steps: number of training steps of the whole run, > 0 (for progress and ETA).
    is_chief: whether this process writes (typically `jax.process_index() == 0`).
    log_every: `progress` prints every `log_every` steps (and at the last step), > 0.
    start_step: step the run resumes from; when > 0, metrics.jsonl records with a larger step
      (and, if it is `total_steps`, the final evaluation's records, which are done again)
      are dropped and TensorBoard hides events from step `start_step + 1` on, so a resumed
      run continues the files without duplicates.
    flush_seconds: the longest a written record stays in memory only while writes go on, >= 0.
    print_fn: where progress lines go (default `say`: stdout, flushed, a closed stream ignored).
    clock: seconds as a float, monotonic; used for steps/s, ETA and `flush_seconds`.
  """

  def __init__(
      self,
      workdir: str,
      *,
      total_steps: int,
      is_chief: bool = True,
      log_every: int = 50,
      start_step: int = 0,
      flush_seconds: float = 30.0,
      print_fn: Callable[[str], Any] = say,
      clock: Callable[[], float] = time.perf_counter,
  ):
    if total_steps <= 0 or log_every <= 0 or start_step < 0 or flush_seconds < 0:
      raise ValueError(f"need total_steps > 0, log_every > 0, start_step >= 0, flush_seconds "
                       f">= 0; got {total_steps=}, {log_every=}, {start_step=}, {flush_seconds=}")
    self.workdir = workdir
    self.total_steps = total_steps
    self.is_chief = is_chief
    self.log_every = log_every
    self.flush_seconds = flush_seconds
    self._print_fn = print_fn
    self._clock = clock
    self._last_progress: tuple[int, float] | None = None  # (step, clock time)
    self._records: list[dict[str, Any]] = []
    self._summary_writer = None  # None: this process does not write, or it was closed
    self._last_flush = clock()
    if is_chief:
      final = start_step >= total_steps  # a finished run, evaluated again
      if start_step > 0:
        self._records = _records_to_keep(workdir, start_step, final=final)
      self._summary_writer = tensorboardX.SummaryWriter(
          str(epath.Path(workdir) / "tensorboard"),
          purge_step=(start_step if final else start_step + 1) if start_step > 0 else None)
      for record in self._records if final else []:  # the purge hid the last step's train record
        if record["step"] == start_step:
          self._add_scalars(record["step"], record["split"],
                            {name: value for name, value in record.items()
                             if name not in ("step", "split") and value is not None})
      self.flush()  # metrics.jsonl now holds the kept records only

  def write(self, step: int, split: str, metrics: Mapping[str, MetricValue]) -> None:
    """Appends {"step", "split", **metrics} to metrics.jsonl and TensorBoard "<split>/<name>".

    Raises ValueError naming the metric if a value is not a scalar / size-1 array, or if a
    name is "step" or "split". Non-finite values become null in JSON and stay as-is in
    TensorBoard. Both files are written out if `flush_seconds` have passed since they were.
    """
    _check_metrics(metrics)
    if not self.is_chief:
      return
    values = {name: _to_python_float(name, value) for name, value in metrics.items()}
    record = {"step": int(step), "split": split}
    record.update({name: _json_float(value) for name, value in values.items()})
    self._records.append(record)
    self._add_scalars(step, split, values)
    if self._clock() - self._last_flush >= self.flush_seconds:
      self.flush()

  def flush(self) -> None:
    """Writes metrics.jsonl whole from the records and flushes the TensorBoard events."""
    if self._summary_writer is None:
      return
    storage.write_file(_metrics_path(self.workdir),
                       "".join(_record_line(record) for record in self._records))
    self._summary_writer.flush()
    self._last_flush = self._clock()

  def _add_scalars(self, step: int, split: str, values: Mapping[str, float]) -> None:
    """TensorBoard scalars "<split>/<name>" at `step`."""
    for name, value in values.items():
      self._summary_writer.add_scalar(f"{split}/{name}", value, int(step))

  def start_clock(self, step: int) -> None:
    """Measures steps/s from now, at `step`: call it once the first step and whatever it
    compiled (its images, summaries) are done, so that compilation is not counted."""
    self._last_progress = (step, self._clock())

  def progress(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
    """Prints `format_progress(...)` every `log_every` steps and at step `total_steps`.

    steps/s is measured (wall clock via `clock`) since the previous printed line or
    `start_clock`; without `start_clock`, the first call only starts the clock and prints
    nothing.
    """
    if not self.is_chief:
      return
    now = self._clock()
    if self._last_progress is None:
      self._last_progress = (step, now)
      return
    if step % self.log_every and step != self.total_steps:
      return
    last_step, last_time = self._last_progress
    elapsed = now - last_time
    steps_per_second = (step - last_step) / elapsed if elapsed > 0 and step > last_step else None
    self._print_fn(format_progress(step, self.total_steps, steps_per_second, metrics or {}))
    self._last_progress = (step, now)

  def write_learned(
      self,
      step: int,
      scalars: Mapping[str, MetricValue],
      vectors: Mapping[str, tuple[Any, Sequence[str]]] | None = None,
      histograms: Mapping[str, Any] | None = None,
  ) -> None:
    """Writes what a method has learned at `step`.

    Args:
      step: training step.
      scalars: name -> one number; a "learned" record and TensorBoard "learned/<name>".
      vectors: name -> (values [n], n labels); component i is written as the scalar
        "<name>[<label i>]" (and plotted by `plot_vectors`, one figure per name).
      histograms: name -> array of draws, TensorBoard histogram "learned/<name>".

    Raises ValueError if a vector's values and labels differ in length.
    """
    record = dict(scalars)
    for name, (values, labels) in (vectors or {}).items():
      values = np.asarray(values).reshape(-1)
      if len(values) != len(labels):
        raise ValueError(f"vector {name!r} has {len(values)} values and {len(labels)} labels")
      record.update({f"{name}[{label}]": value for label, value in zip(labels, values)})
    if record:
      self.write(step, "learned", record)
    if not self.is_chief:
      return
    for name, values in (histograms or {}).items():
      self._summary_writer.add_histogram(f"learned/{name}", np.asarray(values, np.float32),
                                         int(step))

  def plot_vectors(self) -> list[str]:
    """One figure per learned vector, `plots/<name with / as _>.png`: each component against
    step, labelled in a legend, on the vector's `SCALES` scale. Returns the paths (none on
    non-chief processes)."""
    if not self.is_chief:
      return []
    records = [record for record in self._records if record["split"] == "learned"]
    components: dict[str, list[str]] = {}
    for key in dict.fromkeys(key for record in records for key in record):
      if key.endswith("]") and "[" in key:
        name, label = key[:-1].split("[", 1)
        components.setdefault(name, []).append(label)
    plots = epath.Path(self.workdir) / "plots"
    return [storage.write_file(plots / (name.replace("/", "_") + ".png"),
                               _png(vector_figure(records, name, labels)))
            for name, labels in components.items()]

  def _image_path(self, step: int, name: str) -> str:
    return str(epath.Path(self.workdir) / "images" / f"{name}_step{step:07d}.png")

  def save_image_grid(
      self, step: int, name: str, rows: Sequence[np.ndarray], row_labels: Sequence[str]
  ) -> str:
    """Saves `make_image_grid(rows, row_labels)` as PNG and as TensorBoard image `name`.

    Args:
      step: training step, part of the file name and the TensorBoard step.
      name: file-name stem and TensorBoard tag.
      rows: each float [N, H, W, C] in [0, 1], C in (1, 3), e.g. [originals, augmented].
      row_labels: one label per row, drawn on the left.

    Returns:
      `<workdir>/images/<name>_step<step:07d>.png` (written by the chief only).
    """
    path = self._image_path(step, name)
    if not self.is_chief:
      return path
    grid = make_image_grid(rows, row_labels)
    storage.write_file(path, _png(Image.fromarray(grid)))
    self._summary_writer.add_image(name, grid, int(step), dataformats="HWC")
    return path

  def plot_metrics(
      self, prefix: str = "", filename: str = "augmentation_params.png", *,
      split: str | None = "learned", image_shape: tuple[int, int] | None = None
  ) -> str | None:
    """Plots every scalar metric whose name starts with `prefix` against step.

    Only records of `split` (None: all splits); vector components ("<name>[<label>]") are
    left to `plot_vectors`. One subplot per quantity (grid layout; "<q>_mean" and
    "<q>_std" share one, the spread a band), one line per split, each on its fixed `SCALES`
    scale with its identity dashed (distances in pixels of images of `image_shape`,
    (height, width)); null values leave gaps, a single point is a marker. Returns
    `<workdir>/plots/<filename>`, or None if no metric matches or this process is not the
    chief.
    """
    if not self.is_chief:
      return None
    records = [record for record in self._records if split is None or record["split"] == split]
    names = sorted({key for record in records for key in record
                    if key.startswith(prefix) and key not in _RESERVED_KEYS
                    and not key.endswith("]")})
    if not names:
      return None
    return storage.write_file(epath.Path(self.workdir) / "plots" / filename,
                              _png(metrics_figure(records, names, image_shape)))

  def plot_training(self) -> str | None:
    """Plots `plots/training.png`: loss and accuracy of train, val and test against epoch
    (`training_curves`). Returns its path, or None if there is no loss or accuracy yet or
    this process is not the chief."""
    if not self.is_chief or not any(training_curves(self._records)[1].values()):
      return None
    return storage.write_file(epath.Path(self.workdir) / "plots" / "training.png",
                              _png(training_figure(self._records)))

  def close(self) -> None:
    """Writes out metrics.jsonl and the TensorBoard events and closes the TensorBoard writer;
    safe to call twice."""
    if self._summary_writer is not None:
      self.flush()
      self._summary_writer.close()
      self._summary_writer = None
