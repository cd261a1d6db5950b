"""Verifies captured webhook deliveries with the Standard Webhooks reference library.

Reads {"secret": "whsec_...", "deliveries": [{"headers": {...}, "body": "..."}]} on
stdin. Every delivery must verify, and must fail to once its body or id is altered.
Prints the verified payloads as a JSON list.
"""

import json
import sys

from standardwebhooks import Webhook, WebhookVerificationError


def must_fail(hook, body, headers, what):
    try:
        hook.verify(body, headers)
    except WebhookVerificationError:
        return
    sys.exit(f"a delivery with {what} verified")


def main():
    captured = json.load(sys.stdin)
    hook = Webhook(captured["secret"])
    payloads = []
    for delivery in captured["deliveries"]:
        headers, body = delivery["headers"], delivery["body"]
        payloads.append(hook.verify(body, headers))
        must_fail(hook, body + " ", headers, "an altered body")
        must_fail(hook, body, {**headers, "webhook-id": headers["webhook-id"] + "x"}, "another id")
    must_fail(Webhook("whsec_" + "QUJD" * 8), captured["deliveries"][0]["body"],
              captured["deliveries"][0]["headers"], "another secret")
    json.dump(payloads, sys.stdout)


if __name__ == "__main__":
    main()
