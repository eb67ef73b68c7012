"""Name why a sample did not download, from img2dataset's status and error text, as a short stable reason code."""

from __future__ import annotations

import re

# (pattern in img2dataset's error text, reason); first match wins. Order: our own codes, then HTTP, then network.
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"blocked_address"), "blocked_address"),
    (re.compile(r"blocked_scheme|unknown url type"), "blocked_scheme"),
    (re.compile(r"response_too_large"), "too_large_bytes"),
    (re.compile(r"url_deadline"), "url_deadline"),
    (re.compile(r"too_many_redirects"), "too_many_redirects"),
    (re.compile(r"refused format"), "refused_format"),
    # our header check, img2dataset's area check, PIL's bomb check, OpenCV's own cap (OPENCV_IO_MAX_IMAGE_PIXELS)
    (re.compile(r"too many pixels|image area too large|DecompressionBomb|CV_IO_MAX_IMAGE_PIXELS|"
                r"validateInputImageSize"), "too_many_pixels"),
    (re.compile(r"X-Robots-Tag"), "opted_out"),
    (re.compile(r"HTTP Error (\d{3})"), "http_{0}"),
    (re.compile(r"timed out|timeout", re.I), "timeout"),
    (re.compile(r"IncompleteRead|incomplete read|Connection reset|RemoteDisconnected", re.I), "truncated"),
    (re.compile(r"Connection refused", re.I), "connection_refused"),
    (re.compile(r"Name or service not known|nodename nor servname|getaddrinfo|No address associated", re.I),
     "dns_error"),
    (re.compile(r"redirect", re.I), "redirect_error"),
    (re.compile(r"certificate|SSL", re.I), "tls_error"),
    (re.compile(r"Image decoding error|cannot identify image|image file is truncated", re.I), "not_an_image"),
    (re.compile(r"image too small"), "too_small"),
    (re.compile(r"aspect ratio too large"), "bad_aspect_ratio"),
    (re.compile(r"hash mismatch"), "hash_mismatch"),
]


def classify(status: str | None, error: str | None) -> str:
    """`success`, or a reason code such as `http_404`, `timeout` (one socket operation), `url_deadline` (the whole
    URL), `not_an_image`, `refused_format`, `blocked_address`."""
    if status == "success":
        return "success"
    text = error or ""
    for pattern, reason in _RULES:
        m = pattern.search(text)
        if m:
            return reason.format(*m.groups())
    return "other_resize_error" if status == "failed_to_resize" else "other_download_error"
