"""Reason codes from img2dataset's status and error text."""

from __future__ import annotations

import pytest

from pipeline.fetch.download_reasons import classify


@pytest.mark.parametrize(("status", "error", "reason"), [
    ("success", None, "success"),
    ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
    ("failed_to_download", "HTTP Error 500: Internal Server Error", "http_500"),
    ("failed_to_download", "<urlopen error timed out>", "timeout"),
    ("failed_to_download", "The read operation timed out", "timeout"),
    ("failed_to_download", "IncompleteRead(1000 bytes read, 1000 more expected)", "truncated"),
    ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", "opted_out"),
    ("failed_to_download", "<urlopen error blocked_address: x:80 -> 169.254.169.254 is a cloud metadata address>",
     "blocked_address"),
    ("failed_to_download", "<urlopen error blocked_scheme: scheme 'file' is not http or https>", "blocked_scheme"),
    ("failed_to_download", "<urlopen error response_too_large: body larger than 10 bytes>", "too_large_bytes"),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", "connection_refused"),
    ("failed_to_resize", "Image decoding error", "not_an_image"),
    ("failed_to_resize", "too many pixels: 9000x9000 > 40000000", "too_many_pixels"),
    ("failed_to_resize", "image too small", "too_small"),
    ("failed_to_download", "<urlopen error url_deadline: the URL did not finish within its deadline>", "url_deadline"),
    ("failed_to_download", "<urlopen error too_many_redirects: more than 5 redirects, or a redirect loop>",
     "too_many_redirects"),
    ("failed_to_resize", "refused format: Radiance HDR is not one of JPEG, PNG, WEBP, GIF, BMP, TIFF",
     "refused_format"),
    ("failed_to_resize", "OpenCV(4.14.0) loadsave.cpp:88: error: (-215:Assertion failed) pixels <= "
     "CV_IO_MAX_IMAGE_PIXELS in function 'validateInputImageSize'", "too_many_pixels"),
    ("failed_to_resize", "something new", "other_resize_error"),
    ("failed_to_download", "something new", "other_download_error"),
])
def test_classify(status: str, error: str | None, reason: str) -> None:
    assert classify(status, error) == reason
