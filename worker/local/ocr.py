"""OCR with RapidOCR (PP-OCRv4): an image, or each page of a PDF rendered by pdfium, the stop
flag checked between pages. The answer has Mistral's shape: one markdown text per page."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from asyncgate.worker.local.child import Answer, FileData, Refused, cached, check_stop

PDF_DPI = 144
IMAGE_DPI = 72
"""Reported for an image, whose pixels are read as they are."""


@cached
def _engine() -> Any:
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)


def _data(url: str) -> bytes:
    """The bytes of a ``data:`` URL (base64 or percent-encoded)."""
    header, comma, payload = url.partition(",")
    if not url.startswith("data:") or not comma:
        raise Refused("the local OCR model reads data: URLs only (it fetches nothing)", "document")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise Refused(
                f"the document's data URL is not valid base64: {exc}", "document"
            ) from exc
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(payload)


def _pages(data: bytes, wanted: list[int] | None) -> list[tuple[int, Any]]:
    """``(index, PIL image)`` of each page to read: the image itself, or the PDF's pages
    (rendered at :data:`PDF_DPI`)."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(b"%PDF"):
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise Refused(f"the document is neither an image nor a PDF: {exc}", "document") from exc
        return [(0, image.convert("RGB"))]
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise Refused(f"the PDF cannot be read: {exc}", "document") from exc
    indexes = range(len(pdf)) if wanted is None else [i for i in wanted if i < len(pdf)]
    pages = []
    for index in indexes:
        check_stop()
        pages.append((index, pdf[index].render(scale=PDF_DPI / 72).to_pil().convert("RGB")))
    return pages


def ocr(body: dict[str, Any], files: list[FileData]) -> Answer:
    """The text of each page of ``body["document"]``, line by line."""
    document = body.get("document") or {}
    url = str(document.get("document_url") or document.get("image_url") or "")
    data = _data(url)
    wanted = body.get("pages")
    dpi = PDF_DPI if data.startswith(b"%PDF") else IMAGE_DPI
    pages = []
    for index, image in _pages(data, None if wanted is None else list(wanted)):
        check_stop()
        lines, _ = _engine()(image)
        text = "\n".join(str(line[1]) for line in lines or [])
        pages.append(
            {
                "index": index,
                "markdown": text,
                "images": [],
                "dimensions": {"dpi": dpi, "height": image.height, "width": image.width},
            }
        )
    return Answer(
        result={
            "pages": pages,
            "model": body["model"],
            "document_annotation": None,
            "usage_info": {"pages_processed": len(pages), "doc_size_bytes": len(data)},
        }
    )
