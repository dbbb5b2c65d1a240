"""Codecs that turn the bytes of one array piece into stored bytes and back.

Every codec here is lossless: ``decode(encode(data)) == data`` bit for bit.

- ``raw`` stores the bytes as they are.
- ``zstd`` compresses them with Zstandard.
- ``bytegroup_zstd`` first groups byte k of every element together (all low bytes,
  then all next bytes, ...), which puts the slowly varying sign and exponent bytes of
  floating-point data side by side, then compresses with Zstandard.
- ``delta_zstd`` XORs the bytes with the same piece of the previous committed
  checkpoint (the base), then groups bytes and compresses. Unchanged bits become zero
  bytes, which compress well. Without a base it acts as ``bytegroup_zstd``.
"""

from __future__ import annotations

import typing

import numpy as np
import zstandard

from strategies.errors import ConfigError, CorruptCheckpointError

CODECS = ("raw", "zstd", "bytegroup_zstd", "delta_zstd")


class Codec(typing.Protocol):
    """Encodes and decodes the raw bytes of one array piece."""

    name: str
    uses_base: bool  # True when encode and decode need the base checkpoint's bytes

    def encode(self, data: memoryview, itemsize: int, base: memoryview | None = None) -> bytes | memoryview: ...

    def decode(self, data, raw_length: int, itemsize: int, base: memoryview | None = None) -> bytes | memoryview: ...

    def params(self) -> dict: ...


class RawCodec:
    """Stores the bytes as they are."""

    name = "raw"
    uses_base = False

    def encode(self, data, itemsize, base=None):
        return data

    def decode(self, data, raw_length, itemsize, base=None):
        return data

    def params(self) -> dict:
        return {"name": self.name}


class ZstdCodec:
    """Compresses with Zstandard at a level, optionally on several threads."""

    name = "zstd"
    uses_base = False

    def __init__(self, level: int = 3, threads: int = 0) -> None:
        self.level = level
        self.threads = threads
        self._compressor = zstandard.ZstdCompressor(level=level, threads=threads)
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(self, data, itemsize, base=None):
        return self._compressor.compress(data)

    def decode(self, data, raw_length, itemsize, base=None):
        try:
            out = self._decompressor.decompress(data, max_output_size=max(raw_length, 1))
        except zstandard.ZstdError as error:
            raise CorruptCheckpointError(f"zstd data failed to decompress: {error}") from error
        if len(out) != raw_length:
            raise CorruptCheckpointError(f"zstd data decompressed to {len(out)} bytes, expected {raw_length}")
        return out

    def params(self) -> dict:
        return {"name": self.name, "level": self.level}


def group_bytes(data, itemsize: int) -> bytes | memoryview:
    """Reorder ``data`` so byte k of every element comes before byte k+1 of any element."""
    if itemsize <= 1 or len(data) % itemsize:
        return data
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def ungroup_bytes(data, itemsize: int) -> bytes | memoryview:
    """Invert ``group_bytes``."""
    if itemsize <= 1 or len(data) % itemsize:
        return data
    return np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1).T.tobytes()


def xor_bytes(data, base) -> bytes:
    if len(data) != len(base):
        raise CorruptCheckpointError(f"delta piece has {len(data)} bytes but its base has {len(base)}")
    return np.bitwise_xor(np.frombuffer(data, dtype=np.uint8), np.frombuffer(base, dtype=np.uint8)).tobytes()


class ByteGroupZstdCodec(ZstdCodec):
    """Groups bytes by their position in the element, then compresses with Zstandard."""

    name = "bytegroup_zstd"

    def encode(self, data, itemsize, base=None):
        return super().encode(group_bytes(data, itemsize), itemsize)

    def decode(self, data, raw_length, itemsize, base=None):
        return ungroup_bytes(super().decode(data, raw_length, itemsize), itemsize)


class DeltaZstdCodec(ByteGroupZstdCodec):
    """XOR against the base checkpoint's bytes, group bytes, compress with Zstandard."""

    name = "delta_zstd"
    uses_base = True

    def encode(self, data, itemsize, base=None):
        return super().encode(data if base is None else xor_bytes(data, base), itemsize)

    def decode(self, data, raw_length, itemsize, base=None):
        out = super().decode(data, raw_length, itemsize)
        return out if base is None else xor_bytes(out, base)


def make_codec(name: str, *, level: int = 3, threads: int = 0) -> Codec:
    """Return the codec called ``name`` with its settings."""
    classes = {"zstd": ZstdCodec, "bytegroup_zstd": ByteGroupZstdCodec, "delta_zstd": DeltaZstdCodec}
    if name == "raw":
        return RawCodec()
    if name in classes:
        return classes[name](level=level, threads=threads)
    raise ConfigError(f"unknown codec {name!r}: expected one of {', '.join(CODECS)}")


def codec_for_manifest(params: dict) -> Codec:
    """Return the decoder for codec parameters read from a manifest."""
    name = params.get("name") if isinstance(params, dict) else None
    if name not in CODECS:
        raise CorruptCheckpointError(
            f"manifest names unknown codec {name!r}: this version reads {', '.join(CODECS)}; "
            "upgrade strategies or restore another step"
        )
    return make_codec(name)
