"""The external-data files an ONNX model makes its runtime load, read from the protobuf wire format itself: the
device runtime verifies a bundle without the ``onnx`` package (a board has TensorRT's parser, not onnx), and the
walk never loads a weight.

The fields read (onnx.proto3): ModelProto.graph = 7; GraphProto.node = 1, .initializer = 5, .sparse_initializer = 15;
NodeProto.attribute = 5; AttributeProto.t = 5, .g = 6, .tensors = 10, .graphs = 11, .sparse_tensor = 22,
.sparse_tensors = 23; SparseTensorProto.values = 1, .indices = 2; TensorProto.external_data = 13,
.data_location = 14 (EXTERNAL = 1); StringStringEntryProto.key = 1, .value = 2."""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator

EXTERNAL = 1
_MAX_DEPTH = 64  # subgraphs inside subgraphs: deeper than any real model, shallow enough for the stack


class WireError(ValueError):
    """Not a well-formed ONNX protobuf."""


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= end or shift > 63:
            raise WireError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf, start: int, end: int):
    """(field number, wire type, value) of one message: value is an int (varint/fixed) or a (start, end) slice."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield number, wire, value
        elif wire == 1:
            i += 8
            yield number, wire, None
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise WireError("a field runs past its message")
            yield number, wire, (i, i + n)
            i += n
        elif wire == 5:
            i += 4
            yield number, wire, None
        else:
            raise WireError(f"wire type {wire}")
    if i != end:
        raise WireError("a field runs past its message")


def _text(buf, span) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("a location that is not UTF-8") from None


def _tensor(buf, span, found: set) -> None:
    location, external = None, False
    for number, wire, v in _fields(buf, *span):
        if number == 14 and wire == 0:
            external = v == EXTERNAL
        elif number == 13 and wire == 2:
            key = val = None
            for n2, w2, v2 in _fields(buf, *v):
                if n2 == 1 and w2 == 2:
                    key = _text(buf, v2)
                elif n2 == 2 and w2 == 2:
                    val = _text(buf, v2)
            if key == "location":
                location = val
    if external and location is not None:
        found.add(location)


def _sparse(buf, span, found: set) -> None:
    for number, wire, v in _fields(buf, *span):
        if number in (1, 2) and wire == 2:
            _tensor(buf, v, found)


def _graph(buf, span, found: set, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise WireError("subgraphs nested too deep")
    for number, wire, v in _fields(buf, *span):
        if wire != 2:
            continue
        if number == 5:
            _tensor(buf, v, found)
        elif number == 15:
            _sparse(buf, v, found)
        elif number == 1:
            for n2, w2, attr in _fields(buf, *v):
                if n2 == 5 and w2 == 2:
                    _attribute(buf, attr, found, depth)


def _attribute(buf, span, found: set, depth: int) -> None:
    for number, wire, v in _fields(buf, *span):
        if wire != 2:
            continue
        if number in (5, 10):
            _tensor(buf, v, found)
        elif number in (22, 23):
            _sparse(buf, v, found)
        elif number in (6, 11):
            _graph(buf, v, found, depth + 1)


@contextlib.contextmanager
def _graphs(path: str | os.PathLike) -> Iterator[tuple[object, list[tuple[int, int]]]]:
    """The mapped file and the spans of its ModelProto.graph fields; :class:`WireError` where there is none."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise WireError("an empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            spans = [v for number, wire, v in _fields(buf, 0, len(buf)) if number == 7 and wire == 2]
            if not spans:
                raise WireError("no graph")
            yield buf, spans


def external_data_files(path: str | os.PathLike) -> set[str]:
    """The ``location`` of every tensor the model at ``path`` stores outside itself (initializers, constants and
    subgraphs'); raises :class:`WireError` where the file is not a well-formed ONNX protobuf."""
    found: set[str] = set()
    with _graphs(path) as (buf, spans):
        for span in spans:
            _graph(buf, span, found, 0)
    return found


def op_types(path: str | os.PathLike) -> set[str]:
    """The operator types of the main graph's nodes (NodeProto.op_type = 4), e.g. to tell a Q/DQ model."""
    found: set[str] = set()
    with _graphs(path) as (buf, spans):
        for span in spans:
            for number, wire, node in _fields(buf, *span):
                if number == 1 and wire == 2:
                    found |= {_text(buf, v) for n, w, v in _fields(buf, *node) if n == 4 and w == 2}
    return found
