"""Reading an ML Program's weight files (``weights/*.bin``) blob by blob.

coremltools' own reader maps the whole file and hands out copies of its blobs; its loader then
copies each value once more. Loading a 1.2 GB encoder that way held the mapped file *and* the
copies at once: 2.3 GB of resident memory before the executor computed anything. This reader
reads each blob straight from the file into the one array the loader keeps a copy of, so
loading costs about the weights once. It speaks the format Core ML stores (iOS15 onwards):

- a 64-byte file header: ``uint32`` blob count, ``uint32`` version (2);
- per blob, at the offset the program names, 64 bytes of metadata: ``uint32`` sentinel
  ``0xDEADBEEF``, ``uint32`` data type, ``uint64`` size in bytes, ``uint64`` offset of the data,
  ``uint64`` padding in bits (sub-byte types), then reserved words.

Sub-byte values (palettized indices, int4) are rarer and smaller; they go through coremltools'
reader, which unpacks them.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from infra.compat import (
    blob_storage_reader,
    load_mil_function,
    load_program_attributes,
    variadic_dimensions_read_as_unknown,
)

_SENTINEL = 0xDEADBEEF
_METADATA = struct.Struct("<IIQQQ")  # sentinel, data type, size in bytes, data offset, padding bits

# the storage format's data type codes of the byte-aligned types, and the reader method each serves
_BYTE_ALIGNED = {
    "read_fp16_data": (1, np.uint16),  # coremltools' reader hands fp16 out as its bits
    "read_float_data": (2, np.float32),
    "read_uint8_data": (3, np.uint8),
    "read_int8_data": (4, np.int8),
    "read_int16_data": (6, np.int16),
    "read_uint16_data": (7, np.uint16),
    "read_int32_data": (14, np.int32),
    "read_uint32_data": (15, np.uint32),
}
_SUB_BYTE = ("read_int4_data", "read_uint1_data", "read_uint2_data", "read_uint3_data", "read_uint4_data",
             "read_uint6_data")


class WeightFileError(ValueError):
    """A weight file that does not hold the blob its program names."""


class WeightFile:
    """One weight file, read like coremltools' ``_BlobStorageReader`` (the same methods, the same
    values), each blob read on its own from the file."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._size = os.path.getsize(self.path)
        self._sub_byte_reader = None

    def metadata(self, offset: int) -> tuple[int, int, int]:
        """(data type code, size in bytes, data offset) of the blob at ``offset``."""
        with open(self.path, "rb") as file:
            file.seek(offset)
            raw = file.read(_METADATA.size)
        if len(raw) < _METADATA.size:
            raise WeightFileError(f"{self.path}: no blob at offset {offset}: the file has {self._size} bytes")
        sentinel, data_type, size, data_offset, _ = _METADATA.unpack(raw)
        if sentinel != _SENTINEL:
            raise WeightFileError(f"{self.path}: no blob at offset {offset} (its metadata sentinel is "
                                  f"{sentinel:#x}, expected {_SENTINEL:#x}); the file is damaged or not this program's")
        if data_offset + size > self._size:
            raise WeightFileError(f"{self.path}: the blob at offset {offset} ends at byte {data_offset + size}, "
                                  f"past the file's end ({self._size}): the file is truncated")
        return data_type, size, data_offset

    def _read(self, offset: int, code: int, dtype) -> np.ndarray:
        data_type, size, data_offset = self.metadata(offset)
        if data_type != code:
            raise WeightFileError(f"{self.path}: the blob at offset {offset} has data type {data_type}; its "
                                  f"program reads it as type {code}")
        itemsize = np.dtype(dtype).itemsize
        if size % itemsize:
            raise WeightFileError(f"{self.path}: the blob at offset {offset} has {size} bytes, not a whole "
                                  f"number of {np.dtype(dtype).name} values")
        with open(self.path, "rb") as file:
            return np.fromfile(file, dtype=dtype, count=size // itemsize, offset=data_offset)

    def __getattr__(self, name):
        if name in _BYTE_ALIGNED:
            code, dtype = _BYTE_ALIGNED[name]
            return lambda offset: self._read(offset, code, dtype)
        if name in _SUB_BYTE:
            if self._sub_byte_reader is None:
                self._sub_byte_reader = blob_storage_reader(self.path)
            return getattr(self._sub_byte_reader, name)
        raise AttributeError(name)


def load_mil_program(spec, weights_dir: str):
    """The pymil program of a Model proto holding an ML Program, its weights read by
    :class:`WeightFile`; otherwise what coremltools' ``milproto.load`` gives."""
    from coremltools.converters.mil.frontend.milproto import load as milproto  # lazy: as above
    from coremltools.converters.mil.mil import Program  # lazy: as above

    program_spec = spec.mlProgram
    if program_spec.version != 1:
        raise ValueError(f"ML Program version {program_spec.version}; expected 1")
    context = milproto.TranscriptionContext(weights_dir)
    if weights_dir and os.path.isdir(weights_dir):
        for name in os.listdir(weights_dir):
            path = os.path.join(weights_dir, name)
            if os.path.isfile(path):
                context.blob_reader_from_filename[path] = WeightFile(path)
    program = Program()
    with variadic_dimensions_read_as_unknown():
        for name, function in program_spec.functions.items():
            program.add_function(name, load_mil_function(context, function, spec.specificationVersion))
    load_program_attributes(context, program_spec, program)
    return program
