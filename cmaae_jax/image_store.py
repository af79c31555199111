"""On-disk store of the training images (`data.stream`): decoded once, read row by row.

A store holds one process's shard of the training entries, decoded and resized exactly as
`layouts.read_entries` decodes them for `data.image_size` S and `data.resize`, as S x S x 3 uint8
records in one file (record i at byte i * S * S * 3): square images as they are, keep_aspect
images as the valid region reflected bottom/right into an S x S canvas (`images.pad_to`, as
`sampler.Sampler` places in-memory images), their valid (h, w) kept in the index.

Files in the cache folder, for shard p of P (image i of the listed entries belongs to p = i % P):
`train-<resize>-<S>-shard<p>of<P>.u8` (the records) and `.json` beside it (the index: paths,
valid sizes, S, resize, record count and `digest`, a SHA-256 of S, resize and every file's path,
size and mtime). `open_or_build` reuses a store only when its index's digest equals the one of
the entries given now and the record file has the index's length; anything else (a file added,
removed or changed, another S or resize, a missing or short record file) is rebuilt, never
silently reused.

A build is atomic: it first deletes the old index and records, writes the new records and index
under temporary names (`.tmp<pid>`, fsynced), then renames the records and last the index. An
interrupted build (an error, a kill) therefore leaves no index, so no store that opens as complete;
temporary files of a build that was killed outright stay behind until deleted by hand.

Rows are read on demand with positioned reads (`os.preadv`) into an array allocated per call,
never memory-mapped, so the memory a store holds is its small index plus the rows asked for.
"""

import hashlib
import json
import os

import numpy as np

from cmaae_jax import images, layouts

VERSION = 1
# Decoded bytes a build holds at once: images are decoded chunk by chunk, then written.
CHUNK_BYTES = 64 << 20
_HAS_PREADV = hasattr(os, "preadv")


def shard_entries(entries, shard: int = 0, num_shards: int = 1):
    """The entries of shard `shard` of `num_shards`: entry i belongs to shard i % num_shards."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    return list(entries)[shard::num_shards]


def store_paths(cache_dir, image_size: int, resize: str, shard: int = 0, num_shards: int = 1):
    """(record file, index file) of shard `shard` of `num_shards` in `cache_dir`."""
    stem = os.path.join(os.fspath(cache_dir), f"train-{resize}-{image_size}")
    stem += f"-shard{shard}of{num_shards}"
    return stem + ".u8", stem + ".json"


def digest(entries, image_size: int, resize: str) -> str:
    """SHA-256 of S, resize and every entry's path, byte size and mtime (ns), in order."""
    h = hashlib.sha256(json.dumps([VERSION, int(image_size), resize]).encode())
    for e in entries:
        try:
            st = os.stat(e.path)
        except OSError as err:
            raise layouts.DatasetError(f"{e.path}: cannot read ({err.strerror})") from err
        h.update(json.dumps([os.fspath(e.path), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


def _canvases(entries, image_size: int, resize: str):
    """Yields (uint8 [S, S, 3] record, valid (h, w)) per entry, decoding a chunk at a time."""
    record = image_size * image_size * 3
    chunk = max(1, CHUNK_BYTES // record)
    for lo in range(0, len(entries), chunk):
        split = layouts.read_entries(entries[lo : lo + chunk], image_size, resize=resize)
        for im, (h, w) in zip(split.images, split.sizes, strict=True):
            yield images.pad_to(im[:h, :w], (image_size, image_size)), (int(h), int(w))


def _write_synced(path, write):
    """Creates `path`, calls `write(file)`, then flushes it to the disk."""
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _remove(*paths):
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def build(entries, cache_dir, image_size: int, resize: str, shard: int = 0, num_shards: int = 1):
    """Decodes `entries` (this shard's, see `shard_entries`) into a new store; returns its index
    path. Replaces any old store of the same name; atomic (module docstring)."""
    data_path, index_path = store_paths(cache_dir, image_size, resize, shard, num_shards)
    os.makedirs(os.path.dirname(data_path), exist_ok=True)
    _remove(index_path, data_path)  # from here on, no store of this name opens
    tmp_data, tmp_index = f"{data_path}.tmp{os.getpid()}", f"{index_path}.tmp{os.getpid()}"
    sizes = []

    def write_records(f):
        for canvas, hw in _canvases(entries, image_size, resize):
            f.write(np.ascontiguousarray(canvas, np.uint8).data)
            sizes.append(hw)

    # The digest is taken before decoding: a file that changes while it is read makes the
    # next open rebuild.
    index = {
        "version": VERSION,
        "digest": digest(entries, image_size, resize),
        "image_size": int(image_size),
        "resize": resize,
        "shard": int(shard),
        "num_shards": int(num_shards),
        "num_records": len(entries),
        "paths": [os.fspath(e.path) for e in entries],
    }
    try:
        _write_synced(tmp_data, write_records)
        index["sizes"] = sizes
        _write_synced(tmp_index, lambda f: f.write(json.dumps(index).encode()))
        os.replace(tmp_data, data_path)
        os.replace(tmp_index, index_path)  # the store is complete once its index exists
    finally:
        _remove(tmp_data, tmp_index)
    return index_path


class ImageStore:
    """An open store: `len(store)` records, `rows(idx)` reads them, `sizes` their valid sizes.

    Attributes:
      paths: the image file of each record.
      sizes: int32 [N, 2] valid (h, w) of each record for keep_aspect; None for square stores
        (every record is the whole S x S image, and `sampler.Sampler` then passes no sizes).
      shard, num_shards: which shard of the training entries the store holds.
    """

    def __init__(self, data_path, index: dict):
        self.image_size, self.resize = index["image_size"], index["resize"]
        self.shard, self.num_shards = index["shard"], index["num_shards"]
        self.paths = index["paths"]
        valid = np.asarray(index["sizes"], np.int32).reshape(-1, 2)
        self.sizes = None if self.resize == "square" else valid
        self.record_bytes = self.image_size * self.image_size * 3
        self._file = open(data_path, "rb", buffering=0)  # closed by close() or with the object

    def __len__(self):
        return len(self.paths)

    def rows(self, idx) -> np.ndarray:
        """uint8 [k, S, S, 3]: the records at positions `idx` (any order, repeats allowed),
        read in ascending file order into one array allocated for this call."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"rows {idx.min()}..{idx.max()} of a store of {len(self)} records")
        s = self.image_size
        out = np.empty((idx.size, s, s, 3), np.uint8)
        for j in np.argsort(idx, kind="stable"):
            self._read_at(out[j], int(idx[j]) * self.record_bytes)
        return out

    def _read_at(self, buf, offset: int):
        view, done, fd = memoryview(buf).cast("B"), 0, self._file.fileno()
        while done < len(view):
            if _HAS_PREADV:
                got = os.preadv(fd, [view[done:]], offset + done)
            else:  # no positioned reads (Windows): seek, then read into the buffer
                self._file.seek(offset + done)
                got = self._file.readinto(view[done:])
            if not got:
                raise OSError(f"{self._file.name}: ends before byte {offset + len(view)}")
            done += got

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_store(entries, cache_dir, image_size: int, resize: str, shard=0, num_shards=1):
    """The complete, up-to-date store of exactly `entries` (this shard's), or None."""
    data_path, index_path = store_paths(cache_dir, image_size, resize, shard, num_shards)
    try:
        with open(index_path, "rb") as f:
            index = json.loads(f.read())
        length = os.path.getsize(data_path)
    except (OSError, ValueError):
        return None
    n = len(entries)
    if (
        index.get("version") != VERSION
        or index.get("num_records") != n
        or length != n * image_size * image_size * 3
        or len(index.get("sizes", ())) != n
        or index.get("digest") != digest(entries, image_size, resize)
    ):
        return None
    return ImageStore(data_path, index)


def open_or_build(entries, cache_dir, image_size: int, resize: str, shard=0, num_shards=1):
    """Opens shard `shard` of `num_shards` of the training `entries` (all of them, every
    process passes the same list), building it first when it is missing or stale."""
    mine = shard_entries(entries, shard, num_shards)
    if not mine:
        raise layouts.DatasetError(
            f"process {shard} of {num_shards} gets none of the {len(entries)} training images "
            f"(image i goes to process i % {num_shards}): use fewer processes or more images"
        )
    store = open_store(mine, cache_dir, image_size, resize, shard, num_shards)
    if store is None:
        build(mine, cache_dir, image_size, resize, shard, num_shards)
        store = open_store(mine, cache_dir, image_size, resize, shard, num_shards)
    if store is None:
        raise layouts.DatasetError(f"image store in {cache_dir} changed while it was built")
    return store
