"""The one image decoder (vistas.data.decode) behind image folders, ArrayRecord shards and
Parquet files: the decompression-bomb pixel limit holds for every format."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vistas.data import shards, sources
from vistas.errors import DataError


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG that claims ``width`` x ``height`` 8-bit gray pixels (a decompression bomb
    before it is decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


BOMB = r"is 8200x8200 = 67,240,000 pixels, more than the limit of 67,108,864 .*decompression bomb"


def one_line(e) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def packed_with_records(tmp_path, records: list[bytes]):
    """Shards of one split whose records hold ``records`` (image bytes, label 0), written as
    ``pack`` writes them but without ``pack``'s own check of each image."""
    from array_record.python.array_record_module import ArrayRecordWriter

    folder = tmp_path / "folder" / "a"
    folder.mkdir(parents=True)
    for i in range(len(records)):
        Image.new("RGB", (4, 4)).save(folder / f"{i}.png")
    packed = tmp_path / "packed"
    shards.pack(tmp_path / "folder", packed, workers=1)
    shard = next(packed.glob("train-*.array_record"))
    writer = ArrayRecordWriter(str(shard), "group_size:1")
    for data in records:
        writer.write(shards.encode_record(data, 0))
    writer.close()
    manifest = json.loads((packed / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["bytes"] = shard.stat().st_size
    (packed / "manifest.json").write_text(json.dumps(shards.seal_manifest(manifest)))  # its checksum too
    return packed, shard


def parquet_with_images(tmp_path, images: list[bytes]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b in images],
                             "label": np.zeros(len(images), np.int64)}), path)
    return path


def test_shard_and_parquet_images_over_the_pixel_limit_are_refused(tmp_path):
    """A decompression bomb in a shard or a Parquet file is refused before it is decoded, as
    it is in an image folder, with one line naming where it is."""
    bomb = png_claiming(8200, 8200)
    with pytest.raises(DataError, match="image bomb-bytes " + BOMB) as e:
        shards.decode_bytes(bomb, 3, "bomb-bytes")
    one_line(e)

    packed, shard = packed_with_records(tmp_path, [bomb])
    source = sources.load_source("array_record", "train", path=packed)
    with pytest.raises(DataError, match=rf"image record 0 of shard .*{shard.name} " + BOMB) as e:
        source[0]
    one_line(e)

    path = parquet_with_images(tmp_path, [bomb])
    source = sources.load_source("parquet", "train", path=path)
    with pytest.raises(DataError, match=rf"image row 0 of row group 0 of .*{path.name} " + BOMB) as e:
        source[0]
    one_line(e)

    folder = tmp_path / "bombs" / "a"
    folder.mkdir(parents=True)
    (folder / "bomb.png").write_bytes(bomb)
    with pytest.raises(DataError, match=r"image .*bomb\.png " + BOMB + r".*run the pack again") as e:
        shards.pack(tmp_path / "bombs", tmp_path / "out", workers=1)
    one_line(e)


def test_every_format_uses_one_limit(tmp_path, monkeypatch):
    """Lowering ``vistas.data.decode.MAX_IMAGE_PIXELS`` refuses a 20x10 image in a folder, a
    shard, a Parquet file and while packing; the default lets it through everywhere."""
    from vistas.data import decode

    png = tmp_path / "folder" / "a" / "0.png"
    png.parent.mkdir(parents=True)
    Image.new("RGB", (20, 10), (9, 8, 7)).save(png)
    (tmp_path / "folder" / "b").mkdir()  # a classifier's folder needs two classes
    Image.new("RGB", (4, 4)).save(tmp_path / "folder" / "b" / "1.png")
    data = png.read_bytes()
    packed = tmp_path / "packed"
    shards.pack(tmp_path / "folder", packed, workers=1)
    parquet = parquet_with_images(tmp_path, [data])
    readers = {
        "folder": sources.load_source("folder", "train", path=tmp_path / "folder"),
        "array_record": sources.load_source("array_record", "train", path=packed),
        "parquet": sources.load_source("parquet", "train", path=parquet),
    }
    for source in readers.values():
        assert source[0]["image"].shape == (10, 20, 3)
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 199)
    where = {"folder": r"image .*0\.png", "array_record": r"image record 0 of shard .*\.array_record",
             "parquet": r"image row 0 of row group 0 of .*\.parquet"}
    for name, source in readers.items():
        with pytest.raises(DataError, match=where[name] + r" is 20x10 = 200 pixels, more than the "
                                            r"limit of 199 \(vistas\.data\.decode\.MAX_IMAGE_PIXELS\)") as e:
            source[0]
        one_line(e)
    with pytest.raises(DataError, match=r"image .*0\.png is 20x10 = 200 pixels.*run the pack again"):
        shards.pack(tmp_path / "folder", tmp_path / "again", workers=1)
    assert sources.decode_image(png, 3, max_pixels=200).shape == (10, 20, 3)
    assert shards.decode_bytes(data, 1, "x", max_pixels=200).shape == (10, 20, 1)
