#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/) from tests/fixtures and a few
hand-made inputs. Run from anywhere; the corpora are committed, so this runs only when they change:

    python3 tests/fuzz/make_seeds.py
"""
import hashlib
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def write(target, data, name=None):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*path):
    with open(os.path.join(FIXTURES, *path), "rb") as f:
        return f.read()


def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))


def png(width, height, color_type=2, rows=None):
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    idat = png_chunk(b"IDAT", zlib.compress(rows if rows is not None else b""))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + png_chunk(b"IEND", b"")


def image_seeds():
    # The first byte picks the declared MIME type (image_decode_fuzzer.cc): 0 none, 1 jpeg, 2 png.
    pre = os.path.join(FIXTURES, "preprocess")
    for name in sorted(os.listdir(pre)):
        if name.endswith((".png", ".jpg")):
            write("image_decode", b"\0" + read("preprocess", name), "fixture_" + name)
    photo = read("preprocess", "photo_64x48.jpg")
    write("image_decode", b"\1" + photo, "declared_jpeg")
    write("image_decode", b"\2" + photo, "declared_png_mismatch")
    write("image_decode", b"\0" + photo[:300], "truncated_jpeg")
    rows = b"".join(b"\0" + bytes(3 * 4) for _ in range(3))
    write("image_decode", b"\0" + png(4, 3, rows=rows), "rgb_4x3")
    write("image_decode", b"\0" + png(100000, 100000), "huge_header_png")
    write("image_decode", b"\0" + png(4, 3, rows=rows[:5]), "short_idat_png")


def safetensors(tensors, metadata=None, data=b""):
    header = dict(tensors)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    f32 = struct.pack("<6f", *range(6))
    write("safetensors", safetensors({"w": {"dtype": "F32", "shape": [2, 3],
                                            "data_offsets": [0, 24]}}, data=f32), "f32_2x3")
    write("safetensors", safetensors(
        {"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
         "b": {"dtype": "I64", "shape": [1], "data_offsets": [4, 12]},
         "c": {"dtype": "BOOL", "shape": [], "data_offsets": [12, 13]}},
        metadata={"format": "pt"}, data=bytes(13)), "mixed_metadata")
    write("safetensors", safetensors({"e": {"dtype": "F16", "shape": [0],
                                            "data_offsets": [0, 0]}}), "empty_tensor")
    write("safetensors", safetensors({"x": {"dtype": "F32", "shape": [4],
                                            "data_offsets": [0, 16]}}, data=bytes(8)), "truncated")
    # The real fixture's header (its data cut off: every span points past the end).
    real = read("reference_tiny", "model", "model.safetensors")
    (length,) = struct.unpack("<Q", real[:8])
    header = json.loads(real[8:8 + length])
    few = {k: header[k] for k in sorted(header)[:6]}
    write("safetensors", safetensors(few), "fixture_header_no_data")


def config_seeds():
    for parts in (("reference_tiny", "model", "config.json"), ("flex_tiny", "model", "config.json"),
                  ("flex_tiny", "model", "clip", "config.json")):
        write("model_config", read(*parts), "fixture_" + "_".join(parts[:-1]))
    write("model_config", b'{"model_type": "llava"}', "minimal")
    write("model_config", b'{"text_config": {"hidden_size": 1e300}}', "huge_number")
    write("model_config", b"[1, 2, 3]", "not_an_object")


def tokenizer_seeds():
    write("sentencepiece_model", read("flex_tiny", "model", "tokenizer.model"), "fixture_tiny")
    write("sentencepiece_model", read("flex_tiny", "model", "tokenizer.model")[:500], "truncated")
    texts = ["What is in the picture?", "  two  spaces\tand a tab\n", "Größe 日本語 😀 é",
             "<s>[INST] hi </s>", "USER: <image>\nWhat? ASSISTANT:", "\xff\xfe\x80 bad bytes"]
    for i, text in enumerate(texts):
        data = text.encode("utf-8", "surrogateescape") if "\xff" not in text else \
            text.encode("latin-1")
        write("tokenizer", data, "text_%d" % i)
    # Read as token ids (two bytes each): small ids, byte pieces, ids past the vocabulary.
    write("tokenizer", struct.pack("<8h", 1, 5, 40, 300, 511, 512, 515, -1), "ids")


def varint(n):
    out = b""
    while True:
        b = n & 0x7f
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(number, wire_type, payload):
    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def api_seeds():
    sampling = (field(1, 0, varint(16)) + field(2, 5, struct.pack("<f", 0.7)) +
                field(3, 5, struct.pack("<f", 0.9)) + field(4, 0, varint(40)) +
                field(6, 0, varint(1)) + field(7, 2, b"\n") + field(8, 0, varint(1)))
    image = field(1, 2, read("preprocess", "gray_9x5.png")) + field(2, 2, b"image/png")
    write("api_convert", field(1, 2, b"req-1") + field(3, 2, b"What is in the picture?") +
          field(5, 2, sampling) + field(2, 2, image), "question_image")
    turns = (field(4, 2, field(1, 0, varint(1)) + field(2, 2, b"Hi")) +
             field(4, 2, field(1, 0, varint(2)) + field(2, 2, b"Hello")) +
             field(4, 2, field(1, 0, varint(1)) + field(2, 2, b"What?")))
    write("api_convert", turns + field(6, 0, varint(200)), "turns_threshold")
    write("api_convert", field(3, 2, b"q") + field(4, 2, field(2, 2, b"t")), "both_forms")
    write("api_convert", field(3, 2, b"q") + field(2, 2, field(2, 2, b"image/gif")), "bad_mime")


if __name__ == "__main__":
    image_seeds()
    safetensors_seeds()
    config_seeds()
    tokenizer_seeds()
    api_seeds()
