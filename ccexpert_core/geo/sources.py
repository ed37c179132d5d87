"""Where a raster is: a local file, or a URL or GDAL network path that GDAL reads over HTTP or object storage.

A date of a run can be any raster GDAL opens: a local path, an ``http(s)://``, ``s3://``, ``gs://`` or ``az://`` URL
(opened as GDAL's ``/vsicurl/``, ``/vsis3/``, ``/vsigs/`` or ``/vsiaz/`` path) or such a GDAL path itself. A URL is
never taken for a local file (no ``//`` collapsed, no check on disk). What a run records and shows of a raster —
its name in the features and stored options, its address in messages and the report — never holds the credentials
a URL may carry (user and password, a signed query string): those stay in memory, for GDAL. Credentials that GDAL
reads from the environment (``AWS_*``, ``GS_*``, ``AZURE_*``, ``GDAL_HTTP_HEADERS``…) are GDAL's business alone.

The GDAL settings a remote read wants (retries with back-off, merged ranges, HTTP/2 multiplexing, no directory
listing on open) are here once, as defaults under whatever the user set; each tool applies them with its own
GDAL binding. Standard library only, so that the QGIS plugin bundles it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit, urlunsplit

#: URL schemes and the GDAL virtual file system that reads them.
URL_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}
#: GDAL's virtual file systems that read over a network (a path may chain them: /vsizip//vsicurl/…).
NETWORK_FILE_SYSTEMS = (
    "/vsicurl/", "/vsicurl?", "/vsicurl_streaming/", "/vsis3/", "/vsis3_streaming/", "/vsigs/", "/vsigs_streaming/",
    "/vsiaz/", "/vsiaz_streaming/", "/vsiadls/", "/vsioss/", "/vsioss_streaming/", "/vsiswift/",
    "/vsiswift_streaming/", "/vsihdfs/", "/vsiwebhdfs/",
)

#: GDAL's settings for reading over a network, used where the user set none of their own: retries with
#: exponential back-off on 429/5xx (GDAL doubles the delay each time: 1, 2, 4 s), ranges next to each other fetched
#: in one request, several requests over one HTTP/2 connection, a connection that does not answer given up on.
CLOUD_DEFAULTS: Mapping[str, str] = {
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2TLS",
    "GDAL_HTTP_CONNECTTIMEOUT": "30",
}
#: Opening a remote raster looks for no side files (.aux.xml, .ovr, .msk: one request each, for nothing with a
#: COG); set only while a remote raster opens, since local rasters need their side files (a .tfw world file).
READDIR_OPTION = "GDAL_DISABLE_READDIR_ON_OPEN"
REMOTE_READDIR = "EMPTY_DIR"


def cloud_defaults(is_set: Callable[[str], bool]) -> dict[str, str]:
    """:data:`CLOUD_DEFAULTS` less what the user set (``is_set``: whether GDAL already has a value for a key)."""
    return {key: value for key, value in CLOUD_DEFAULTS.items() if not is_set(key)}


@dataclass(frozen=True)
class RasterLocation:
    """Where one raster is, as GDAL opens it (:meth:`of` makes one from what a user gives).

    ``gdal_path`` may carry credentials: it is for GDAL only. A run records :attr:`name` and shows :attr:`shown`.
    """

    gdal_path: str

    @classmethod
    def of(cls, given: "str | os.PathLike[str] | RasterLocation") -> "RasterLocation":
        """A URL as its GDAL path (``https://h/a.tif`` → ``/vsicurl/https://h/a.tif``, ``s3://b/k`` → ``/vsis3/b/k``),
        a GDAL virtual path as it is, anything else as a local path."""
        if isinstance(given, RasterLocation):
            return given
        text = os.fspath(given)
        scheme = urlsplit(text).scheme.lower() if "://" in text else ""
        if scheme in URL_SCHEMES:
            prefix = URL_SCHEMES[scheme]
            return cls(prefix + text if prefix == "/vsicurl/" else prefix + text.split("://", 1)[1])
        return cls(text)

    def __repr__(self) -> str:  # never the credentials, in a traceback or a log
        return f"RasterLocation({self.shown!r})"

    def __str__(self) -> str:
        return self.shown

    @property
    def remote(self) -> bool:
        """Whether GDAL reads it over a network."""
        return any(prefix in self.gdal_path for prefix in NETWORK_FILE_SYSTEMS)

    @property
    def local(self) -> Path | None:
        """The file on this machine's disks; None for a remote or other virtual raster."""
        return None if self.gdal_path.startswith("/vsi") else Path(self.gdal_path)

    @property
    def name(self) -> str:
        """The file's name, as a run records it: the last part of its path, without a URL's query string."""
        local = self.local
        if local is not None:
            return local.name or self.gdal_path
        return PurePosixPath(_redacted(_url_or_path(self.gdal_path)).rstrip("/")).name or self.shown

    @property
    def shown(self) -> str:
        """Where it is, for people: a URL without its user, password or query string (a signed URL's signature)."""
        inner = _url_or_path(self.gdal_path)
        if inner is not self.gdal_path and "://" in inner and self.gdal_path.startswith("/vsicurl"):
            return _redacted(inner)  # /vsicurl/https://h/a.tif is shown as the URL the user knows
        return _redacted(self.gdal_path)

    @property
    def withholds_credentials(self) -> bool:
        """Whether :attr:`shown` leaves out part of the address (a user, password or query string)."""
        inner = _url_or_path(self.gdal_path)
        return _redacted(inner) != inner or self.gdal_path.startswith("/vsicurl?")

    @property
    def href(self) -> str | None:
        """The address for readers other than GDAL (a STAC item's JSON): a local path, or the URL of a ``/vsicurl/``
        path (credentials included, for reading); None for GDAL's other virtual paths."""
        if self.gdal_path.startswith("/vsicurl/"):
            return self.gdal_path[len("/vsicurl/"):]
        return None if self.gdal_path.startswith("/vsi") else self.gdal_path

    def redact(self, text: str) -> str:
        """``text`` (GDAL's message about this raster, say) with the raster named as :attr:`shown` and whatever of
        its address :attr:`shown` leaves out taken away, wherever it appears (GDAL may name the file alone)."""
        text = text.replace(self.gdal_path, self.shown)
        inner = _url_or_path(self.gdal_path)
        parts = urlsplit(inner) if "://" in inner else None
        secrets = [self.gdal_path[len("/vsicurl?"):]] if self.gdal_path.startswith("/vsicurl?") else []
        if parts is not None:
            secrets += ["?" + parts.query if parts.query else "", "#" + parts.fragment if parts.fragment else ""]
            secrets.append(parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else "")
        for secret in sorted(filter(None, secrets), key=len, reverse=True):
            text = text.replace(secret, "")
        return text

    def absolute(self) -> "RasterLocation":
        """A local path made absolute (another process resolves relative ones against its own folder)."""
        local = self.local
        return self if local is None else RasterLocation(str(local.absolute()))


def _url_or_path(gdal_path: str) -> str:
    """The URL inside a GDAL path (``/vsicurl/URL``, ``/vsicurl?…&url=URL``), else the path itself."""
    if gdal_path.startswith("/vsicurl?"):
        urls = parse_qs(gdal_path[len("/vsicurl?"):]).get("url")
        return urls[0] if urls else gdal_path
    start = gdal_path.find("://")
    if start < 0:
        return gdal_path
    head = gdal_path[:start]
    scheme_start = head.rfind("/") + 1
    return gdal_path[scheme_start:]


def _redacted(text: str) -> str:
    """``text`` without a URL's user and password, query string and fragment (the path as it is otherwise)."""
    start = text.find("://")
    if start < 0:
        return text.split("?", 1)[0] if text.startswith("/vsi") else text
    head, url = text[: text.rfind("/", 0, start) + 1], text[text.rfind("/", 0, start) + 1 :]
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return head + urlunsplit((parts.scheme, host, parts.path, "", ""))
