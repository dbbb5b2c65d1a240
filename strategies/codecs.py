"""Codecs that turn the bytes of one array into stored bytes and back.

Every codec here is lossless: ``decode(encode(data)) == data`` bit for bit.
"""

from __future__ import annotations

import typing

import zstandard

from strategies.errors import ConfigError, CorruptCheckpointError


class Codec(typing.Protocol):
    """Encodes and decodes the raw bytes of one array."""

    name: str

    def encode(self, data: memoryview) -> bytes | memoryview: ...

    def decode(self, data: bytes | memoryview, raw_length: int) -> bytes | memoryview: ...

    def params(self) -> dict: ...


class RawCodec:
    """Stores the bytes as they are."""

    name = "raw"

    def encode(self, data: memoryview) -> memoryview:
        return data

    def decode(self, data: bytes | memoryview, raw_length: int) -> bytes | memoryview:
        return data

    def params(self) -> dict:
        return {"name": self.name}


class ZstdCodec:
    """Compresses with Zstandard at a level, optionally on several threads."""

    name = "zstd"

    def __init__(self, level: int = 3, threads: int = 0) -> None:
        self.level = level
        self.threads = threads
        self._compressor = zstandard.ZstdCompressor(level=level, threads=threads)
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(self, data: memoryview) -> bytes:
        return self._compressor.compress(data)

    def decode(self, data: bytes | memoryview, raw_length: int) -> bytes:
        try:
            return self._decompressor.decompress(data, max_output_size=raw_length)
        except zstandard.ZstdError as error:
            raise CorruptCheckpointError(f"zstd data failed to decompress: {error}") from error

    def params(self) -> dict:
        return {"name": self.name, "level": self.level}


def make_codec(name: str, *, level: int = 3, threads: int = 0) -> Codec:
    """Return the codec called ``name`` with its settings."""
    if name == "raw":
        return RawCodec()
    if name == "zstd":
        return ZstdCodec(level=level, threads=threads)
    raise ConfigError(f"unknown codec {name!r}: expected raw or zstd")


def codec_for_manifest(params: dict) -> Codec:
    """Return the decoder for codec parameters read from a manifest."""
    name = params.get("name") if isinstance(params, dict) else None
    if name not in ("raw", "zstd"):
        raise CorruptCheckpointError(
            f"manifest names unknown codec {name!r}: this version reads raw and zstd; "
            "upgrade strategies or restore another step"
        )
    return make_codec(name)
