"""Which digest a registry tag names now, for imagePullPolicy Always.

The kubelet asks the registry at every container start which image a tag names, and pulls it
only when that digest is not on the node. The plugin does the same at each create: a tag is
looked up here (one HEAD of its manifest, after the registry's token exchange) and the pod is
planned with the image pinned to that digest (``name@sha256:…``), so its file in the shared
cache is named by the digest: an unchanged image is reused, a pushed one is pulled.

A registry that cannot be asked (compute sites are often behind firewalls) does not fail the
pod: it runs the tag as before (its cached file, or a pull of the tag) and the log says why.
Answers are kept for a few seconds, so a burst of creates of one image asks once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from interlink_slurm.config import Settings
from interlink_slurm.translate.images import credentials, manifest_ref, pinned, registry_of
from interlink_slurm.translate.pod import pull_secrets, tags_to_look_up, with_images
from interlink_slurm.wire import RetrievedPodData, Secret

log = logging.getLogger(__name__)

# How long a registry's answer stands for the next creates of the same image, and how long a
# failed lookup does (a site whose firewall drops the packets would otherwise make every create
# wait for the timeout).
ANSWER_SECONDS = 2.0
FAILED_SECONDS = 30.0
# Answers kept before the expired ones are dropped.
KEPT_ANSWERS = 1024
# Every manifest type a tag may name: an index (multi-platform) or one image, Docker or OCI.
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class LookupFailed(Exception):
    """The registry did not name the tag's digest (unreachable, refused, no such tag)."""


@dataclass(frozen=True)
class _Answer:
    digest: str | None
    error: str
    until: float


class Registries:
    """Looks tags up in their registries over HTTPS (plain HTTP for ``image_registries_http``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        asked: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        """``asked`` is told the outcome of each question put to a registry: ``digest`` or
        ``failed`` (answers kept for a burst are not questions)."""
        self._settings = settings
        self._asked = asked
        self._transport = transport
        self._clock = clock
        self._client: httpx.AsyncClient | None = None
        self._answers: dict[tuple[str, str], _Answer] = {}
        self._asking: dict[tuple[str, str], asyncio.Task[_Answer]] = {}

    async def pin(self, data: RetrievedPodData) -> RetrievedPodData:
        """The pod with each image whose pull policy is Always pinned to the digest its tag
        names now (unchanged where the registry could not say)."""
        wanted = tags_to_look_up(data, self._settings)
        if not wanted:
            return data
        secrets = pull_secrets(data)
        refs = list(wanted)
        digests = await asyncio.gather(*(self._digest(wanted[r], secrets) for r in refs))
        return with_images(data, {r: pinned(r, d) for r, d in zip(refs, digests, strict=True) if d})

    async def _digest(self, source: str, secrets: Sequence[Secret]) -> str | None:
        try:
            return await self.digest(source, secrets)
        except LookupFailed as err:
            log.warning(
                "imagePullPolicy Always: %s runs as the tag names it in the cache, not the "
                "registry's current image: %s",
                source,
                err,
            )
            return None

    async def digest(self, source: str, secrets: Sequence[Secret] = ()) -> str:
        """The digest the docker:// ``source``'s tag names now. Raises LookupFailed."""
        creds = credentials(secrets, registry_of(source)) if secrets else None
        key = (source, creds[0] if creds else "")
        answer = self._answers.get(key)
        if answer is None or answer.until <= self._clock():
            asking = self._asking.get(key)
            if asking is None:
                # One question per image at a time, in a task of its own: a create whose
                # client goes away does not cut the answer short for the others that wait.
                asking = asyncio.create_task(self._ask(source, creds))
                self._asking[key] = asking
                asking.add_done_callback(lambda task: self._answered(key, task))
            answer = await asyncio.shield(asking)
        if answer.digest is None:
            raise LookupFailed(answer.error)
        return answer.digest

    def _answered(self, key: tuple[str, str], task: asyncio.Task[_Answer]) -> None:
        del self._asking[key]
        if not task.cancelled() and task.exception() is None:
            if len(self._answers) >= KEPT_ANSWERS:
                # Pods name images without end (a new tag per build): keep the live answers.
                now = self._clock()
                self._answers = {k: a for k, a in self._answers.items() if a.until > now}
            self._answers[key] = task.result()

    async def aclose(self) -> None:
        """Close the HTTP client (at shutdown)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self._settings.image_lookup_timeout_seconds,
                # The host is the pod's choice: the plugin goes nowhere else on its word.
                follow_redirects=False,
            )
        return self._client

    async def _ask(self, source: str, creds: tuple[str, str] | None) -> _Answer:
        timeout = self._settings.image_lookup_timeout_seconds
        try:
            digest = await asyncio.wait_for(self._head(source, creds), timeout)
        except TimeoutError:
            error = f"no answer within {timeout:g} s"
        except (httpx.HTTPError, LookupFailed) as err:
            error = str(err) or type(err).__name__
        else:
            self._asked("digest")
            return _Answer(digest, "", self._clock() + ANSWER_SECONDS)
        self._asked("failed")
        return _Answer(None, error, self._clock() + FAILED_SECONDS)

    async def _head(self, source: str, creds: tuple[str, str] | None) -> str:
        ref = manifest_ref(source)
        scheme = "http" if ref.registry in self._settings.image_registries_http else "https"
        url = f"{scheme}://{ref.endpoint}/v2/{ref.repository}/manifests/{ref.reference}"
        headers = {"Accept": MANIFEST_TYPES}
        client = self._http()
        response = await client.head(url, headers=headers)
        if response.status_code == 401:
            authorization = await self._authorize(response, ref.repository, creds)
            response = await client.head(url, headers={**headers, **authorization})
        if response.status_code != 200:
            raise LookupFailed(f"{ref.endpoint} answered {response.status_code} for {url}")
        digest = str(response.headers.get("Docker-Content-Digest", ""))
        if not _DIGEST.fullmatch(digest):
            raise LookupFailed(f"{ref.endpoint} named no sha256 digest for {url}")
        return digest

    async def _authorize(
        self, challenge: httpx.Response, repository: str, creds: tuple[str, str] | None
    ) -> dict[str, str]:
        """The Authorization header the registry's challenge asks for: Basic with the pod's
        credentials, or Bearer with a token from the registry's token service."""
        scheme, _, params = challenge.headers.get("WWW-Authenticate", "").partition(" ")
        basic = httpx.BasicAuth(*creds) if creds else None
        if scheme.lower() == "basic" and creds is not None:
            pair = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        if scheme.lower() != "bearer":
            raise LookupFailed(f"the registry asks for credentials ({scheme or 'no challenge'})")
        fields = dict(_CHALLENGE_PARAM.findall(params))
        realm = fields.pop("realm", "")
        schemes = ("https://", "http://") if challenge.url.scheme == "http" else ("https://",)
        if not realm.startswith(schemes):
            # The registry is the pod's choice, and so is its token service: only over HTTPS
            # (as the registry itself is, unless the site listed it in image_registries_http).
            raise LookupFailed("the registry's challenge names no token service over HTTPS")
        fields.setdefault("scope", f"repository:{repository}:pull")
        response = await self._http().get(realm, params=fields, auth=basic)
        if response.status_code != 200:
            raise LookupFailed(f"the token service answered {response.status_code}")
        try:
            body = response.json()
        except ValueError as err:
            raise LookupFailed("the token service's answer is not JSON") from err
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise LookupFailed("the token service gave no token")
        return {"Authorization": f"Bearer {token}"}
