#!/usr/bin/env python3
"""POST a CBOR body to a CoAP URL with aiocoap, a client written by others.

Used by gateway/tests/interop.rs. Usage:

    aiocoap_post.py URL PAYLOAD_HEX TIMEOUT_SECONDS

Sends one confirmable POST with Content-Format 60 (application/cbor) and
prints two lines on stdout for the Rust test to parse:

    code 2.04
    payload <response payload as hex>

Exit status: 0 when an answer came (whatever its code), 2 on a usage error,
3 when aiocoap is not installed, 4 when no answer came in time, 1 (with a
traceback on stderr) when aiocoap reports any other error.
"""

import asyncio
import sys

try:
    import aiocoap
except ImportError as e:
    print(
        f"aiocoap is not installed ({e}): run `bash .ci/run`, "
        "or `python3 -m pip install 'aiocoap[oscore]'`",
        file=sys.stderr,
    )
    sys.exit(3)

# RFC 7252 §12.3: application/cbor.
CONTENT_FORMAT_CBOR = 60


async def post(url: str, payload: bytes, timeout: float) -> int:
    context = await aiocoap.Context.create_client_context()
    try:
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
        return 0
    finally:
        await context.shutdown()


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    url, payload_hex, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    return asyncio.run(post(url, bytes.fromhex(payload_hex), timeout))


if __name__ == "__main__":
    sys.exit(main())
