"""Writing the simulated dataset in NSD-Flat's hub layout: PNGs, parquet shards, card.

Rows follow :data:`FEATURES` (NSD-Flat's full row schema) exactly (the parquet files carry the
``huggingface`` schema metadata, so ``datasets`` restores the Image columns), shards
are named like the hub's (``data/train-00000-of-00054.parquet``) and each split is
streamed shard by shard, so memory stays bounded whatever the dataset size.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from boldgpt.data import schema


def _repetitions_features() -> datasets.Features:
    # For each of the 8 NSD subjects and 3 repetitions: the 1-based trial id at which
    # the subject saw this image (0 when it did not), as in nsd_stim_info_merged.csv.
    return {
        f"subject{s}_rep{r}": datasets.Value("int64")
        for s in range(1, schema.NUM_NSD_SUBJECTS + 1)
        for r in range(3)
    }


FEATURES = datasets.Features(
    {
        "subject_id": datasets.Value("int64"),
        "trial_id": datasets.Value("int64"),
        "session_id": datasets.Value("int64"),
        "nsd_id": datasets.Value("int64"),
        "image": datasets.Image(),
        "activity": datasets.Image(),
        "subject": datasets.Value("string"),
        "flagged": datasets.Value("bool"),
        "BOLD5000": datasets.Value("bool"),
        "shared1000": datasets.Value("bool"),
        "coco_split": datasets.Value("string"),
        "coco_id": datasets.Value("int64"),
        "objects": {
            "area": datasets.List(datasets.Value("int64")),
            "bbox": datasets.List(datasets.List(datasets.Value("float64"))),
            "category": datasets.List(datasets.Value("string")),
            "iscrowd": datasets.List(datasets.Value("int64")),
            "segmentation": datasets.List(
                {
                    "counts": datasets.Value("string"),
                    "poly": datasets.List(datasets.List(datasets.Value("float64"))),
                    "size": datasets.List(datasets.Value("int64")),
                }
            ),
            "supercategory": datasets.List(datasets.Value("string")),
            "target": datasets.List(datasets.Value("int64")),
        },
        "captions": datasets.List(datasets.Value("string")),
        "repetitions": _repetitions_features(),
    }
)
"""The full NSD-Flat row schema (Hugging Face ``datasets`` features): the hub dataset's
columns and types, which the simulator writes."""

ROW_GROUP_ROWS = 256
"""Rows per parquet row group (about 30 MB with 256 px pictures)."""


def encode_png(array: np.ndarray, level: int = 1) -> bytes:
    """Encode (H, W) uint8 as a grayscale or (H, W, 3) uint8 as an RGB PNG.

    A minimal encoder (one IDAT chunk, "Up" filter, zlib level 1; run-length matching
    for grayscale maps, which is both faster and smaller on them): 2-3x faster than
    Pillow's, and zlib releases the GIL, so threads encode in parallel. Any PNG reader
    decodes it.
    """
    a = np.ascontiguousarray(array)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3); got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    rows = a.reshape(h, -1)
    raw = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 2  # filter type "Up": each row minus the row above (mod 256)
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    color_type = 0 if a.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", _deflate(raw.tobytes(), level, rle=a.ndim == 2)),
            _chunk(b"IEND", b""),
        ]
    )


def _deflate(data: bytes, level: int, rle: bool) -> bytes:
    strategy = zlib.Z_RLE if rle else zlib.Z_DEFAULT_STRATEGY
    c = zlib.compressobj(level, zlib.DEFLATED, 15, 8, strategy)
    return c.compress(data) + c.flush()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def shard_names(split: str, num_rows: int, rows_per_shard: int) -> list[str]:
    """Hub-style shard paths of a split, relative to the dataset root."""
    n = max(1, math.ceil(num_rows / rows_per_shard))
    return [f"data/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


class SplitWriter:
    """Streams the rows of one split into ``rows_per_shard``-row parquet shards.

    ``total_rows`` must be known up front (shard names carry the shard count); writing
    a different number of rows is an error at ``close``.
    """

    def __init__(self, root: Path, split: str, total_rows: int, rows_per_shard: int):
        self.root = Path(root)
        self.names = shard_names(split, total_rows, rows_per_shard)
        self.split = split
        self.total_rows = total_rows
        self.rows_per_shard = rows_per_shard
        self.schema = FEATURES.arrow_schema
        self._writer: pq.ParquetWriter | None = None
        self._shard = -1
        self._in_shard = 0
        self.written = 0

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._shard += 1
        path = self.root / self.names[self._shard]
        path.parent.mkdir(parents=True, exist_ok=True)
        # PNG bytes do not compress further: storing them plain saves time, the other
        # columns get snappy (the parquet default).
        codecs = {path: "snappy" for path in _leaf_paths(self.schema)}
        codecs.update({"image.bytes": "none", "activity.bytes": "none"})
        self._writer = pq.ParquetWriter(path, self.schema, compression=codecs)
        self._in_shard = 0

    def write(self, table: pa.Table) -> None:
        """Append rows (a table with the FEATURES schema), cutting shards as needed."""
        start = 0
        while start < len(table):
            if self._writer is None or self._in_shard == self.rows_per_shard:
                self._open_next()
            n = min(len(table) - start, self.rows_per_shard - self._in_shard)
            self._writer.write_table(table.slice(start, n), row_group_size=ROW_GROUP_ROWS)
            self._in_shard += n
            self.written += n
            start += n

    def close(self) -> None:
        if self.total_rows == 0 and self._writer is None:
            self._open_next()  # an empty split still gets its one (empty) shard
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.written != self.total_rows:
            raise RuntimeError(
                f"split {self.split}: wrote {self.written} rows, expected {self.total_rows}"
            )


def _leaf_paths(arrow_schema: pa.Schema) -> list[str]:
    """Parquet column paths of every leaf (``objects.bbox.list.element.list.element``)."""

    def walk(prefix: str, t: pa.DataType) -> list[str]:
        if pa.types.is_struct(t):
            return [p for f in t for p in walk(f"{prefix}.{f.name}", f.type)]
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return walk(f"{prefix}.list.element", t.value_type)
        return [prefix]

    return [p for f in arrow_schema for p in walk(f.name, f.type)]


def rows_table(columns: dict[str, Any]) -> pa.Table:
    """Build a FEATURES table from columns: numpy arrays for scalars, lists of PNG bytes
    for ``image`` / ``activity``, arrow arrays or python lists for the nested ones,
    and a (n, 24) int64 array for ``repetitions``."""
    arrow_schema = FEATURES.arrow_schema
    arrays = []
    for field in arrow_schema:
        value = columns[field.name]
        if field.name in ("image", "activity"):
            arrays.append(
                pa.StructArray.from_arrays(
                    [pa.array(value, pa.binary()), pa.nulls(len(value), pa.string())],
                    fields=list(field.type),
                )
            )
        elif field.name == "repetitions":
            reps = np.asarray(value, dtype=np.int64)
            arrays.append(
                pa.StructArray.from_arrays(
                    [pa.array(reps[:, i]) for i in range(reps.shape[1])], fields=list(field.type)
                )
            )
        elif isinstance(value, (pa.Array, pa.ChunkedArray)):
            arrays.append(value.cast(field.type) if value.type != field.type else value)
        else:
            arrays.append(pa.array(value, type=field.type))
    return pa.Table.from_arrays(arrays, schema=arrow_schema)


def dataset_card(info: dict[str, Any]) -> str:
    """The README.md of a simulated dataset: hub YAML header, then a description."""
    splits = info["splits"]
    yaml = [
        "---",
        "license: mit",
        "pretty_name: nsd-flat-sim",
        "tags:",
        "- fmri",
        "- neuroscience",
        "- synthetic",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*",
        "  - split: test",
        "    path: data/test-*",
        "---",
    ]
    subjects = ", ".join(schema.subject_name(s) for s in info["subjects"])
    source = info["design"]["source"]
    design = "generated NSD-like schedule" if source == "generated" else f"schedule `{source}`"
    body = f"""
# nsd-flat-sim ({info["preset"]}, seed {info["seed"]})

A **simulated** fMRI dataset in the exact format of
[NSD-Flat](https://huggingface.co/datasets/{schema.HUB_ID}), written by boldgpt's embedded
generator (`boldgpt data simulate`, version {info["version"]}). It is not real brain data:
it has a known ground truth, so models trained on it can be scored against it.

| | |
| --- | --- |
| subjects | {subjects} |
| trials | {splits["train"]} train, {splits["test"]} test |
| validation | {info["val_rows"]} train rows show shared images (the `val` split) |
| stimuli | {info["num_stimuli"]} pictures, {info["image_size"]} px, 24 categories + person |
| design | {design} |
| mask | {info["mask"]["source"]}, {info["mask"]["pixels"]} pixels |
| SNR | {info["snr"]} (mean over mask pixels of signal variance / noise variance, single trial) |

## Format

Columns, dtypes and encodings are NSD-Flat's: `activity` is a 215 x 200 grayscale PNG,
per-session z-scored activity clipped to [-2.5, 2.5] and stored as
`uint8(255 * (z + 2.5) / 5)` (127 is about 0; pixels outside the mask are 127);
decode with `z = 5 * u / 255 - 2.5`. `image` is the RGB stimulus (PNG). `objects`
holds COCO-style annotations of the visible objects (main object first), `captions`
five captions, `repetitions.subject{{s}}_rep{{r}}` the 1-based trial id of subject s's
r-th presentation of the image (0 if none). The hub `test` split is each subject's last
{info["test_sessions"]} session(s); `shared1000` marks the images shared by all subjects
(the conventional validation set).

## Generative model

* **Geometry**: a procedural two-hemisphere visual cortex (or the given mask) with a
  retinotopic atlas: V1, V2, V3, hV4, VO, ventral temporal cortex, V3A/B, IPS, LO and
  TO, log-polar eccentricity, polar-angle reversals at area borders, mirrored between
  hemispheres.
* **Early visual response**: each pixel's Gaussian population receptive field pools
  local contrast energy (fine, coarse and colour channels, area-specific mix) followed
  by a compressive exponent (CSS model).
* **Category-selective regions** for faces, bodies, animals, food, places, vehicles
  and small objects, plus finer category-specific patterns in high-level cortex.
* **Subjects** differ by a smooth warp of the atlas (about {info["warp_mm"]} mm), a
  smooth gain field, region amplitudes and idiosyncratic patterns.
* **Noise**: unit variance per pixel, 55% smooth (sigma 2 mm), 25% large-scale modes,
  20% white; session offsets and gains; per-session z-scoring; uint8 quantization.

## Ground truth (`truth/`)

* `stimuli.npz`: `nsd_id`, `drives` (category drives), `label` (contiguous COCO index
  of the main object), `scene`; `features.npy`: (n, 3, 32, 32) float16 contrast features,
  rows matching `stimuli.npz`.
* `subjectNN.npz`: each subject's model (atlas, receptive fields, loadings, gains,
  calibration) over the mask pixels.

`boldgpt.sim.load_ground_truth(dir, subject_id, nsd_ids)` returns the
noiseless maps in the z units of the data. `simulation.json` lists every parameter.
"""
    return "\n".join(yaml) + "\n" + body
