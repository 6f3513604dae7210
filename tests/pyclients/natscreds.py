"""A SLED device credential used by nats-py (TestNATSCredsWithPython).

Usage: natscreds.py URL DEVICE_CREDS DEVICE_ID OTHER_ID

Checks, against a server with auth on: an anonymous connection is refused; the
device's .creds file connects; a JetStream publish on the device's own draft
subject is stored and acknowledged (the ack arrives on the device's own inbox
prefix, _INBOX.<id>); a subscription to sled.> and a publish on another device's
draft subject are refused with a permissions violation.
"""
import asyncio
import sys

import nats
from nats.errors import NoServersError


async def main(url, creds, me, other):
    try:
        nc = await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=3)
        await nc.close()
        raise SystemExit("anonymous connection accepted")
    except (NoServersError, nats.errors.Error, OSError) as e:
        print("anonymous refused:", type(e).__name__, e)

    violations = []

    async def on_error(e):
        violations.append(str(e))

    nc = await nats.connect(url, user_credentials=creds, inbox_prefix="_INBOX." + me,
                            error_cb=on_error, max_reconnect_attempts=0, connect_timeout=3)
    js = nc.jetstream()
    ack = await js.publish(f"sled.draft.default.{me}", b"{}", timeout=3)
    assert ack.stream == "SLED_DRAFTS", ack
    print("own draft stored:", ack.stream, ack.seq)

    await nc.subscribe("sled.>")
    await nc.flush()
    await nc.publish(f"sled.draft.default.{other}", b"{}")
    await nc.flush()
    for _ in range(30):
        if len(violations) >= 2:
            break
        await asyncio.sleep(0.1)
    print("violations:", violations)
    joined = " ".join(violations).lower()
    assert "permissions violation for subscription" in joined, violations
    assert "permissions violation for publish" in joined, violations
    await nc.close()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
