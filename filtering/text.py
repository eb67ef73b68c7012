"""Caption signals: length in characters and words, and whether the caption says nothing about the image.

A generic caption is one a web page attaches to any image: a file name (`IMG_2041.jpg`), a single word
(`image`), or boilerplate (`click to enlarge`, `no description available`). Such pairs teach a contrastive model
nothing, so recipes usually drop them (`drop_generic_captions: true`).
"""

from __future__ import annotations

import re

_IMAGE_EXT = r"(?:jpe?g|png|gif|webp|bmp|tiff?|heic|avif|svg)"
# A caption that is only a file name, with or without a path: "IMG_2041.jpg", "photos/DSC00012.JPG".
_FILE_NAME = re.compile(rf"^\S*\.{_IMAGE_EXT}$", re.IGNORECASE)
# Camera and phone default names without an extension: "IMG_2041", "DSC00012", "PXL_20230101_123456".
_CAMERA_NAME = re.compile(
    r"^(?:img|dsc|dscn|dcim|pxl|pict?|photo|image|screenshot|scan|mvimg|gopr|untitled|unnamed)[\s_-]*\d[\d_-]*$",
    re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)

# Phrases that web pages put on any picture. Compared after lower-casing and dropping punctuation.
BOILERPLATE = frozenset({
    "image", "images", "photo", "photos", "picture", "pictures", "img", "thumbnail", "thumb", "untitled",
    "untitled image", "no image", "image not found", "no description", "no description available",
    "description not available", "click to enlarge", "click here to enlarge", "click to zoom", "click to view",
    "click for larger image", "click image to enlarge", "view larger image", "see larger image", "enlarge",
    "zoom", "loading", "loading image", "placeholder", "placeholder image", "default image", "stock photo",
    "stock image", "product image", "featured image", "main image", "image of", "photo of", "picture of",
    "image description", "alt text", "alt", "logo", "icon", "banner", "advertisement", "ad", "spacer",
    "blank", "null", "none", "undefined", "n a", "na", "caption", "insert caption here", "your image here",
    "download", "free download", "download now", "click here", "click here to download", "click to download",
    "view full size", "view full image", "full size", "view image", "see more", "read more", "more info",
    "screenshot", "screen shot", "image may contain", "no alt text", "image unavailable", "photo unavailable",
})


def caption_words(caption: str) -> int:
    return len(_WORD.findall(caption))


def normalize_caption(caption: str) -> str:
    """Lower-case words joined by single spaces, punctuation dropped (for boilerplate matching)."""
    return " ".join(w.lower() for w in _WORD.findall(caption))


def generic_reason(caption: str) -> str | None:
    """Why a caption is generic ('empty', 'file_name', 'boilerplate', 'single_word', 'no_words'), or None."""
    text = caption.strip()
    if not text:
        return "empty"
    if _FILE_NAME.match(text) or _CAMERA_NAME.match(text):
        return "file_name"
    norm = normalize_caption(text)
    if not norm:
        return "no_words"
    if norm in BOILERPLATE:
        return "boilerplate"
    if len(norm.split()) == 1:
        return "single_word"
    return None


def caption_signals(caption: str) -> dict:
    reason = generic_reason(caption)
    return {
        "caption_chars": len(caption.strip()),
        "caption_words": caption_words(caption),
        "generic_caption": reason is not None,
        "generic_reason": reason,
    }
