"""DICOMweb sources: a study, series or instance URL, or a QIDO-RS query, as named Part-10 sources.

::

    dicomweb://HOST[:PORT]/PREFIX/studies/UID[/series/UID[/instances/UID]][?QUERY]
    dicomwebs://...                      the same over https
    dicomweb://HOST[:PORT]/PREFIX?Modality=CR&StudyDate=20260101-     a QIDO-RS query over all studies

:func:`expand_dicomweb` lists the instances with QIDO-RS (paged, ``limit``/``offset``) and fetches
them with WADO-RS **one at a time, lazily**: it is a generator, and each item is an
``io.BytesIO`` holding one instance's Part-10 bytes, named by its ``dicomweb://`` instance URL
(which can be classified again on its own and never holds credentials). Structured reports,
key-object selections, presentation states and encapsulated documents found by a study, series or
query listing are skipped (they carry no image; medzero's own reports land in the same study).
An instance that cannot be fetched becomes a :class:`medzero.Source` with its one-line error,
and the rest go on.

Credentials never come from the URL or the command line: ``--credentials FILE`` (JSON
``{"token": ...}`` or ``{"user": ..., "password": ...}``, or one line ``user:password`` or
``token``), else ``MEDZERO_DICOMWEB_CREDENTIALS`` (a file), ``MEDZERO_DICOMWEB_TOKEN``, or
``MEDZERO_DICOMWEB_USER`` + ``MEDZERO_DICOMWEB_PASSWORD``. They are never logged or put in an error.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping
from urllib.parse import parse_qsl, urlsplit

from ..core.errors import BadInputError, MedzeroError, one_line
from . import require_pacs

if TYPE_CHECKING:  # pragma: no cover
    import requests
    from dicomweb_client import DICOMwebClient

__all__ = [
    "DicomWebURL",
    "Credentials",
    "parse_dicomweb_url",
    "parse_query",
    "load_credentials",
    "make_client",
    "expand",
    "expand_dicomweb",
    "SCHEMES",
]

_logger = logging.getLogger(__name__)

#: URL scheme -> the HTTP scheme it stands for
SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
#: QIDO parameters that are not attribute filters
_QIDO_PARAMS = {"limit", "fuzzymatching", "includefield", "offset"}
#: instances per QIDO page
PAGE = 500
#: SOP classes with no image to classify (prefixes): SR, KOS and other 88.x, presentation
#: states (11.x), encapsulated documents (104.x)
_NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.104.")
_HOWTO = "use --credentials FILE, or MEDZERO_DICOMWEB_TOKEN, or MEDZERO_DICOMWEB_USER and MEDZERO_DICOMWEB_PASSWORD"


# -- URLs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomWebURL:
    """A parsed ``dicomweb://`` URL: the service and the study / series / instance it names."""

    scheme: str  # "dicomweb" or "dicomwebs"
    netloc: str  # host[:port], no credentials
    prefix: str  # the service path, e.g. "/dicom-web" ("" at the root)
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    query: str = ""  # the QIDO query after "?", as written

    @property
    def base_url(self) -> str:
        """The HTTP(S) URL of the DICOMweb service, e.g. ``http://pacs:8042/dicom-web``."""
        return f"{SCHEMES[self.scheme]}://{self.netloc}{self.prefix}"

    def url(self, study: str | None = None, series: str | None = None, instance: str | None = None) -> str:
        """The ``dicomweb://`` URL of a study, series or instance of this service (no query)."""
        out = f"{self.scheme}://{self.netloc}{self.prefix}"
        for word, uid in (("studies", study), ("series", series), ("instances", instance)):
            if uid is None:
                break
            out += f"/{word}/{uid}"
        return out

    def __str__(self) -> str:
        return self.url(self.study, self.series, self.instance) + (f"?{self.query}" if self.query else "")


def parse_dicomweb_url(url: str) -> DicomWebURL:
    """``dicomweb[s]://HOST[:PORT]/PREFIX[/studies/UID[/series/UID[/instances/UID]]][?QUERY]``.

    Credentials in the URL are refused (they end up in shell history and logs).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise BadInputError(f"{url}: not a DICOMweb URL (expected dicomweb://HOST[:PORT]/PATH/studies/UID)")
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or "?"
        raise BadInputError(
            f"{scheme}://{host}/...: credentials do not belong in the URL (they end up in logs and shell history); {_HOWTO}"
        )
    if not parts.hostname:
        raise BadInputError(f"{url}: no host (expected {scheme}://HOST[:PORT]/PATH/studies/UID)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise BadInputError(f"{url}: the port is not a number") from None
    segments = [s for s in parts.path.split("/") if s]
    lowered = [s.lower() for s in segments]
    start = lowered.index("studies") if "studies" in lowered else len(segments)
    prefix = "/" + "/".join(segments[:start]) if start else ""
    levels = segments[start:]
    uids: list[str | None] = [None, None, None]
    if levels:
        expected = ("studies", "series", "instances")
        if len(levels) % 2 or len(levels) > 6 or any(levels[i].lower() != expected[i // 2] for i in range(0, len(levels), 2)):
            if not (len(levels) == 1 and lowered[start] == "studies"):  # ".../studies?query"
                raise BadInputError(
                    f"{url}: expected .../studies/UID[/series/UID[/instances/UID]] after the service path"
                )
        for i in range(1, len(levels), 2):
            uid = levels[i]
            if not _UID.match(uid) or len(uid) > 64:
                raise BadInputError(f"{url}: {uid[:70]!r} is not a DICOM UID")
            uids[i // 2] = uid
    return DicomWebURL(scheme, parts.netloc, prefix, *uids, query=parts.query)


def parse_query(query: str | None) -> tuple[dict[str, str], int | None, bool]:
    """A QIDO-RS query string (``Modality=CR&StudyDate=20260101-``) as search filters.

    Returns ``(filters, limit, fuzzymatching)``. Keys are DICOM keywords or 8-hex-digit tags;
    a key given twice has its values joined by commas (QIDO's list matching). ``limit`` caps the
    number of instances expanded (not a page size: medzero pages by itself).
    """
    from pydicom.datadict import tag_for_keyword

    filters: dict[str, str] = {}
    limit: int | None = None
    fuzzy = False
    if not query:
        return filters, limit, fuzzy
    try:
        pairs = parse_qsl(query.lstrip("?"), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadInputError(f"query {query!r}: expected KEY=VALUE pairs joined by & (e.g. Modality=CR&StudyDate=20260101-)") from None
    for key, value in pairs:
        key = key.strip()
        if key.lower() == "limit":
            if not value.isdigit() or int(value) < 1:
                raise BadInputError(f"query: limit={value!r} is not a positive number")
            limit = int(value)
        elif key.lower() == "fuzzymatching":
            fuzzy = value.lower() in ("true", "1", "yes")
        elif key.lower() in _QIDO_PARAMS:
            raise BadInputError(f"query: {key} is set by medzero; leave it out")
        else:
            if not (re.fullmatch(r"[0-9A-Fa-f]{8}", key) or tag_for_keyword(key) is not None):
                raise BadInputError(f"query: {key!r} is not a DICOM attribute keyword or tag (e.g. Modality, StudyDate, 00080060)")
            filters[key] = f"{filters[key]},{value}" if key in filters else value
    return filters, limit, fuzzy


# -- credentials ---------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Credentials:
    """A bearer token, or a user and password. ``repr`` and ``str`` never show the secret."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    origin: str = ""  # where they came from, for messages: a file name or the variable names

    def __repr__(self) -> str:
        kind = "token" if self.token else "user and password"
        return f"Credentials({kind} from {self.origin or '?'})"

    __str__ = __repr__

    def apply(self, session: "requests.Session") -> "requests.Session":
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        else:
            session.auth = (self.user or "", self.password or "")
        return session


def _read_credentials_file(path: str) -> Credentials:
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise BadInputError(f"cannot read the credentials file {path}: {exc.strerror or exc}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        _logger.warning("the credentials file %s can be read by other users; chmod 600 it", path)
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise BadInputError(f"the credentials file {path} is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadInputError(f"the credentials file {path} must hold a JSON object")
        token = data.get("token")
        user = data.get("user", data.get("username"))
        password = data.get("password")
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
        if len(lines) != 1:
            raise BadInputError(f"the credentials file {path} must hold one line (user:password or a token) or a JSON object")
        token, user, password = None, None, None
        if ":" in lines[0]:
            user, password = lines[0].split(":", 1)
        else:
            token = lines[0]
    if token:
        return Credentials(token=str(token), origin=path)
    if user is None or password is None:
        raise BadInputError(f"the credentials file {path} needs a token, or a user and a password")
    return Credentials(user=str(user), password=str(password), origin=path)


def load_credentials(credentials: "str | os.PathLike | Credentials | None" = None, env: Mapping[str, str] | None = None) -> Credentials | None:
    """Credentials from ``credentials`` (a file, or a :class:`Credentials`), else the environment, else ``None``."""
    if isinstance(credentials, Credentials):
        return credentials
    if credentials is not None:
        return _read_credentials_file(os.fspath(credentials))
    env = os.environ if env is None else env
    if env.get("MEDZERO_DICOMWEB_CREDENTIALS"):
        return _read_credentials_file(env["MEDZERO_DICOMWEB_CREDENTIALS"])
    if env.get("MEDZERO_DICOMWEB_TOKEN"):
        return Credentials(token=env["MEDZERO_DICOMWEB_TOKEN"], origin="MEDZERO_DICOMWEB_TOKEN")
    user, password = env.get("MEDZERO_DICOMWEB_USER"), env.get("MEDZERO_DICOMWEB_PASSWORD")
    if user or password:
        if not (user and password is not None):
            raise BadInputError("set both MEDZERO_DICOMWEB_USER and MEDZERO_DICOMWEB_PASSWORD, or neither")
        return Credentials(user=user, password=password, origin="MEDZERO_DICOMWEB_USER/PASSWORD")
    return None


# -- client --------------------------------------------------------------------------------------


def make_client(target: "str | DicomWebURL", credentials: "str | os.PathLike | Credentials | None" = None, *, timeout: float = 60.0) -> "DICOMwebClient":
    """A ``DICOMwebClient`` for the service of ``target`` with the credentials applied."""
    require_pacs("dicomweb_client")
    import requests
    from dicomweb_client import DICOMwebClient

    parsed = target if isinstance(target, DicomWebURL) else parse_dicomweb_url(target)
    session = requests.Session()
    creds = load_credentials(credentials)
    if creds is not None:
        creds.apply(session)
    client = DICOMwebClient(url=parsed.base_url, session=session, timeout=(10.0, timeout))
    client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)
    return client


def http_error(exc: BaseException, what: str, base: str) -> MedzeroError:
    """A one-line error for a failed DICOMweb request (never the credentials, never a response body)."""
    import requests

    if isinstance(exc, MedzeroError):
        return exc
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return BadInputError(f"{base} refused the credentials (HTTP {code}) while {what}; {_HOWTO}")
        if code == 404:
            return BadInputError(f"{base}: not found (HTTP 404) while {what}")
        return BadInputError(f"{base}: HTTP {code} {exc.response.reason or ''} while {what}".strip())
    if isinstance(exc, requests.exceptions.RequestException):
        kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "cannot be reached"
        return BadInputError(f"{base} {kind} while {what}")
    return BadInputError(f"{base}: {what} failed: {one_line(exc, 160)}")


def _tag_value(row: Mapping[str, Any], tag: str) -> str | None:
    element = row.get(tag) or {}
    values = element.get("Value") or []
    return str(values[0]) if values else None


def _listing(client: "DICOMwebClient", parsed: DicomWebURL, filters: dict[str, str], limit: int | None, fuzzy: bool) -> Iterator[tuple[str, str, str, str | None]]:
    """(study, series, instance, SOP class) for every instance the URL and query name, page by page."""
    if parsed.instance is not None:
        if parsed.series is None or parsed.study is None:  # pragma: no cover - the parser forbids it
            raise BadInputError(f"{parsed}: an instance URL needs its study and series")
        yield parsed.study, parsed.series, parsed.instance, None
        return
    seen: set[str] = set()
    offset = 0
    while True:
        page = PAGE if limit is None else min(PAGE, limit - len(seen))
        if page <= 0:
            return
        rows = client.search_for_instances(
            study_instance_uid=parsed.study,
            series_instance_uid=parsed.series,
            fuzzymatching=fuzzy or None,
            limit=page,
            offset=offset or None,
            fields=["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"],
            search_filters=filters or None,
        )
        fresh = 0
        for row in rows:
            sop = _tag_value(row, "00080018")
            study = _tag_value(row, "0020000D") or parsed.study
            series = _tag_value(row, "0020000E") or parsed.series
            if sop is None or study is None or series is None or sop in seen:
                continue
            seen.add(sop)
            fresh += 1
            yield study, series, sop, _tag_value(row, "00080016")
        if not rows or not fresh:  # the end, or a server that ignores offset
            return
        offset += len(rows)


def _fetch(client: "DICOMwebClient", study: str, series: str, sop: str) -> bytes:
    import pydicom

    dataset = client.retrieve_instance(study, series, sop)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def expand(
    url: str,
    *,
    query: str | None = None,
    credentials: "str | os.PathLike | Credentials | None" = None,
    client: "DICOMwebClient | None" = None,
) -> Iterator[Any]:
    """The instances a ``dicomweb://`` URL (and optional QIDO ``query``) names, fetched lazily.

    Yields ``io.BytesIO`` objects of Part-10 bytes named by their ``dicomweb://`` instance URL,
    one instance in memory at a time as the caller consumes them; an instance that cannot be
    fetched is yielded as a :class:`medzero.Source` with its error. A problem before the first
    instance (bad URL or query, refused credentials, server down) raises a one-line
    :class:`MedzeroError`; after it, the problem is yielded as an error row and the expansion stops.
    """
    parsed = parse_dicomweb_url(url)
    filters, limit, fuzzy = parse_query(parsed.query)
    extra, extra_limit, extra_fuzzy = parse_query(query)
    filters.update(extra)
    limit = extra_limit if extra_limit is not None else limit
    fuzzy = fuzzy or extra_fuzzy
    if parsed.study is None and not filters:
        raise BadInputError(
            f"{parsed}: name a study (.../studies/UID) or give a query (e.g. --query 'Modality=CR&StudyDate=20260101-'); "
            "medzero does not fetch a whole archive"
        )
    return _expand(parsed, filters, limit, fuzzy, client if client is not None else make_client(parsed, credentials))


def _expand(parsed: DicomWebURL, filters: dict[str, str], limit: int | None, fuzzy: bool, client: "DICOMwebClient") -> Iterator[Any]:
    from ..core.ingest import Source

    base = parsed.url(parsed.study, parsed.series, parsed.instance)
    listing = _listing(client, parsed, filters, limit, fuzzy)
    count = skipped = 0
    while True:
        try:
            study, series, sop, sop_class = next(listing)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - any failure of the listing is one line
            error = http_error(exc, "searching (QIDO-RS)", parsed.base_url)
            if count == 0:
                raise error from None
            yield Source(base, base, error=error)
            return
        if sop_class and parsed.instance is None and sop_class.startswith(_NON_IMAGE_SOP_PREFIXES):
            skipped += 1
            continue
        name = parsed.url(study, series, sop)
        count += 1
        try:
            data = _fetch(client, study, series, sop)
        except Exception as exc:  # noqa: BLE001 - one instance's failure is its own error row
            error = http_error(exc, f"fetching (WADO-RS) {name}", parsed.base_url)
            if count == 1 and isinstance(error, BadInputError) and "refused the credentials" in str(error):
                raise error from None
            yield Source(name, name, error=error)
            continue
        source = io.BytesIO(data)
        source.name = name
        del data
        yield source
    if skipped:
        _logger.info("%s: skipped %d instance(s) without an image (SR, KO, PR, documents)", base, skipped)
    if count == 0:
        _logger.info("%s: no instances found", parsed)


def expand_dicomweb(url: str, query: str | None = None, credentials: str | None = None) -> Iterator[Any]:
    """The ``dicomweb://`` / ``dicomwebs://`` scheme handler of the ingest pipeline.

    ``query``: a QIDO-RS query (``Modality=CR&StudyDate=20260101-``), also accepted after ``?`` in
    the URL; ``credentials``: a credentials file (else the environment). Lazy: see :func:`expand`.
    """
    return expand(url, query=query, credentials=credentials)

