"""Who may use a served model and what it accepts: one set of rules for the Gradio page
(`serve`) and the OpenAI-compatible API (`serve --api`).

- Credentials: `--auth USER:PASS` and/or a token read from an environment variable
  (`--token-env`, default `DSVL_SERVE_TOKEN`). Once either is set, every request needs it
  (the API: `Authorization: Bearer TOKEN` or HTTP Basic USER:PASS; the page: its login form,
  with USER:PASS or any user name and the token as password).
- Binding beyond loopback (`--host 0.0.0.0`) without credentials is refused.
- Uploads: at most `--max-upload-mb` per image (and per request body), images only (the bytes
  must open as an image, whatever the name or MIME type claims).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import io
import ipaddress
import os
from dataclasses import dataclass

from dsvl_exp.inference.cli import UsageError

DEFAULT_TOKEN_ENV = "DSVL_SERVE_TOKEN"
DEFAULT_MAX_UPLOAD_MB = 10.0
LOOPBACK_NAMES = ("localhost",)


class UploadError(ValueError):
    """An upload the server refuses: too large (`too_large`) or not an image."""

    def __init__(self, message: str, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("access")
    group.add_argument("--auth", metavar="USER:PASS", help="require this user name and password")
    group.add_argument("--token-env", metavar="VAR", default=DEFAULT_TOKEN_ENV,
                       help=f"require the token in this environment variable when it is set (default {DEFAULT_TOKEN_ENV})")
    group.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                       help=f"largest image (and API request body) accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB:g})")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


@dataclass(frozen=True)
class AccessPolicy:
    user: str | None = None
    password: str | None = None
    token: str | None = None
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)

    @property
    def required(self) -> bool:
        return self.user is not None or self.token is not None

    def login_ok(self, user: str, password: str) -> bool:
        """The page's login form: USER:PASS, or the token as password (any user name)."""
        pair_ok = self.user is not None and hmac.compare_digest(f"{user}:{password}", f"{self.user}:{self.password}")
        token_ok = self.token is not None and hmac.compare_digest(password, self.token)
        return pair_ok or token_ok

    def header_ok(self, authorization: str | None) -> bool:
        """An HTTP Authorization header: `Bearer TOKEN` or `Basic base64(USER:PASS)`."""
        if not self.required:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "bearer":
            return self.token is not None and hmac.compare_digest(value.strip(), self.token)
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return self.login_ok(user, password)
        return False

    def check_image(self, data: bytes, what: str) -> None:
        """Raise UploadError unless `data` is an image within the size limit."""
        if len(data) > self.max_upload_bytes:
            raise UploadError(f"{what} is {len(data) / 2**20:.1f} MB; the limit is {self.max_upload_bytes / 2**20:g} MB "
                              "(--max-upload-mb)", too_large=True)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise UploadError(f"{what} is not an image ({error})") from None


def access_policy(args: argparse.Namespace, environ=os.environ) -> AccessPolicy:
    """The policy of the command line; a bind beyond loopback without credentials is a UsageError."""
    user = password = None
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise UsageError("--auth must be USER:PASS, both non-empty")
    token = environ.get(args.token_env) or None
    if args.max_upload_mb <= 0:
        raise UsageError(f"--max-upload-mb={args.max_upload_mb} must be positive")
    policy = AccessPolicy(user, password, token, int(args.max_upload_mb * 1024 * 1024))
    if not is_loopback(args.host) and not policy.required:
        raise UsageError(f"--host {args.host} lets other machines connect: require credentials with --auth USER:PASS "
                         f"or a token in ${args.token_env}, or keep --host 127.0.0.1")
    return policy
