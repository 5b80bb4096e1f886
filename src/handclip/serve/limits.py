"""Upload limits: request size, image formats and pixel counts, checked before anything is stored.

Each refusal is an ``UploadRefused`` with the HTTP status it maps to (413 too large, 415 a format the
service does not take, 422 a file that does not decode), so the client gets one JSON sentence, never
a 500. The request-size limit is ``BodySizeLimit``, in front of the app.
(FastAPI's own ``max_body_size`` answers in plain text, not JSON.)
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from ..errors import HandCLIPError

# Formats a hand photo arrives in; decided from the file's bytes, never from its name.
ALLOWED_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo; far above any hand image, far below a bomb
MIN_SIDE = 16  # the smallest image enrolment and search accept (handclip.data.images.scan_images)


class UploadRefused(HandCLIPError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


def check_image(data: bytes, name: str, limits: Limits) -> str:
    """Check one uploaded file; returns the file suffix of its format. Raises UploadRefused."""
    if not data:
        raise UploadRefused(422, f"uploaded file {name!r} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format, image.size
                if fmt not in ALLOWED_FORMATS:
                    raise UploadRefused(415, f"uploaded file {name!r} is {fmt}; the service takes "
                                             f"{', '.join(sorted(ALLOWED_FORMATS))}")
                # The header's size is checked before decoding, so a decompression bomb is never expanded.
                if width * height > limits.max_pixels:
                    raise UploadRefused(413, f"uploaded image {name!r} has {width}x{height} pixels, more than "
                                             f"the limit of {limits.max_pixels}")
                if min(width, height) < MIN_SIDE:
                    raise UploadRefused(422, f"uploaded image {name!r} is {width}x{height}; "
                                             f"both sides must be at least {MIN_SIDE} pixels")
                image.load()
    except UploadRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRefused(413, f"uploaded image {name!r} is too large to decode safely") from None
    except UnidentifiedImageError:
        raise UploadRefused(415, f"uploaded file {name!r} is not an image in a known format "
                                 f"(the service takes {', '.join(sorted(ALLOWED_FORMATS))})") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for bad data; all mean "corrupt"
        raise UploadRefused(422, f"uploaded image {name!r} is truncated or corrupt ({exc or type(exc).__name__})") from None
    return ALLOWED_FORMATS[fmt]


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over the limit. A declared ``Content-Length`` over it
    is refused in JSON before anything is read; a chunked body is counted as it arrives and refused
    with an ``HTTPException(413)``, which the app's handler turns into the same JSON."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            body = json.dumps({"error": too_large(self.max_bytes)}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    from starlette.exceptions import HTTPException

                    raise HTTPException(413, too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)


def too_large(max_bytes: int) -> str:
    return f"request body is larger than the limit of {max_bytes} bytes"
