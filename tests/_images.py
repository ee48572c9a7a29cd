"""Image fixtures shared by the preprocessing and infer.py tests."""
import numpy as np
from PIL import Image


def huge_png(path, w=20000, h=20000):
    """A PNG whose header claims w x h (the pixel data is not all there: it must be refused before decoding)."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # length(4) type(4) then data
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[ihdr + 4:ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13:ihdr + 8 + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path
