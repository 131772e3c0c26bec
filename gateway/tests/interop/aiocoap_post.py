#!/usr/bin/env python3
"""POST a CBOR body to a CoAP URL with aiocoap, a client written by others.

Used by gateway/tests/interop.rs. Usage:

    aiocoap_post.py URL PAYLOAD_HEX TIMEOUT_SECONDS [OSCORE_CONTEXT_DIR]

Sends one confirmable POST with Content-Format 60 (application/cbor). With
OSCORE_CONTEXT_DIR, the request is OSCORE-protected (RFC 8613) with the
security context in that directory (aiocoap's FilesystemSecurityContext:
`settings.json` with the ids, ID Context and master secret; aiocoap writes
its sequence numbers there, so the directory must be writable), and only an
answer that aiocoap verified with it is reported. Prints three lines on
stdout for the Rust test to parse:

    code 2.04
    payload <response payload as hex>
    oscore yes

`code` and `payload` are the (inner, when protected) response's; `oscore`
says whether aiocoap verified it as a protected answer.

Exit status: 0 when an answer came (whatever its code), 2 on a usage error,
3 when aiocoap (with its OSCORE extra) is not installed, 4 when no answer
came in time, 1 (with a traceback on stderr) when aiocoap reports any other
error, an unprotected or unverifiable answer to a protected request among
them.
"""

import asyncio
import sys
from urllib.parse import urlsplit

try:
    import aiocoap
    from aiocoap.transports.oscore import OSCOREAddress
except ImportError as e:
    print(
        f"aiocoap is not installed ({e}): run `bash .ci/run`, "
        "or `python3 -m pip install 'aiocoap[oscore]'`",
        file=sys.stderr,
    )
    sys.exit(3)

# RFC 7252 §12.3: application/cbor.
CONTENT_FORMAT_CBOR = 60


def oscore_credentials(url: str, context_dir: str) -> dict:
    """aiocoap's client credentials: every resource of the URL's origin is
    protected with the security context in `context_dir`."""
    origin = urlsplit(url)
    pattern = f"{origin.scheme}://{origin.netloc}/*"
    return {pattern: {"oscore": {"contextfile": context_dir.rstrip("/") + "/"}}}


async def post(url: str, payload: bytes, timeout: float, context_dir) -> int:
    context = await aiocoap.Context.create_client_context()
    try:
        if context_dir is not None:
            context.client_credentials.load_from_dict(
                oscore_credentials(url, context_dir)
            )
        request = aiocoap.Message(
            code=aiocoap.POST,
            uri=url,
            payload=payload,
            content_format=CONTENT_FORMAT_CBOR,
        )
        try:
            response = await asyncio.wait_for(
                context.request(request).response, timeout
            )
        except asyncio.TimeoutError:
            print(f"no answer from {url} within {timeout} s", file=sys.stderr)
            return 4
        print(f"code {response.code.dotted}")
        print(f"payload {response.payload.hex()}")
        protected = isinstance(response.remote, OSCOREAddress)
        print(f"oscore {'yes' if protected else 'no'}")
        return 0
    finally:
        await context.shutdown()


def main() -> int:
    if len(sys.argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    url, payload_hex, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    context_dir = sys.argv[4] if len(sys.argv) == 5 else None
    return asyncio.run(post(url, bytes.fromhex(payload_hex), timeout, context_dir))


if __name__ == "__main__":
    sys.exit(main())
