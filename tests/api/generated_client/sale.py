"""The README's sale, driven through a client that openapi-python-client
generated from the server's own OpenAPI document (tests/api/generated_client.rs
generates it as the package `flashsale_client` and runs this script).

Environment: FLASHSALE_URL, FLASHSALE_ADMIN_TOKEN, and PLATFORM_JWT, a
platform user's JWT the server trusts (--idp-jwks). Exits non-zero with the
failed step on any surprise; prints "sale ok" at the end.
"""

import datetime
import os
import sys

from flashsale_client import AuthenticatedClient, Client
from flashsale_client.api.admin import create_merchant, credit_wallet
from flashsale_client.api.merchant import create_deal
from flashsale_client.api.public import create_shopper, exchange_token, get_deal
from flashsale_client.api.shopper import buy, get_wallet
from flashsale_client.models import (
    BuyBody,
    CreateDealBody,
    CreateMerchantBody,
    CreateShopperBody,
    CreditWalletBody,
)

URL = os.environ["FLASHSALE_URL"]


def step(name, response, status):
    if response.status_code != status:
        sys.exit(f"{name}: expected {status}, got {response.status_code}: {response.content!r}")
    return response.parsed


def authenticated(token):
    return AuthenticatedClient(base_url=URL, token=token, raise_on_unexpected_status=True)


admin = authenticated(os.environ["FLASHSALE_ADMIN_TOKEN"])
anyone = Client(base_url=URL, raise_on_unexpected_status=True)

merchant = step(
    "create the merchant",
    create_merchant.sync_detailed(client=admin, body=CreateMerchantBody(name="Phones Inc")),
    201,
)
shopper = step(
    "sign the shopper up",
    create_shopper.sync_detailed(client=anyone, body=CreateShopperBody(name="Alice")),
    201,
)
step(
    "credit the wallet",
    credit_wallet.sync_detailed(
        shopper.id, client=admin, body=CreditWalletBody(amount="1500.00", reference="topup-1")
    ),
    201,
)
# Python's own datetimes carry microseconds: the server keeps milliseconds.
now = datetime.datetime.now(datetime.timezone.utc)
deal = step(
    "post the deal",
    create_deal.sync_detailed(
        client=authenticated(merchant.token),
        body=CreateDealBody(
            title="Phone X",
            price="999.00",
            stock=500,
            per_user_limit=1,
            starts_at=now - datetime.timedelta(minutes=1),
            ends_at=now + datetime.timedelta(hours=1),
        ),
    ),
    201,
)
alice = authenticated(shopper.token)
order = step(
    "buy",
    buy.sync_detailed(deal.id, client=alice, body=BuyBody(quantity=1), idempotency_key="tap-1"),
    201,
)
again = step(
    "retry the buy",
    buy.sync_detailed(deal.id, client=alice, body=BuyBody(quantity=1), idempotency_key="tap-1"),
    201,
)
if again.id != order.id:
    sys.exit(f"the retry made another order: {again.id} != {order.id}")
wallet = step("read the wallet", get_wallet.sync_detailed(client=alice), 200)
if (wallet.available, wallet.spent) != ("501.00", "999.00"):
    sys.exit(f"the wallet is off: {wallet}")
seen = step("read the deal", get_deal.sync_detailed(deal.id, client=anyone), 200)
if (seen.remaining, seen.sold) != (499, 1):
    sys.exit(f"the deal is off: {seen}")

# A platform user: the JWT exchanged for the engine's own token.
exchanged = step(
    "exchange the platform's token",
    exchange_token.sync_detailed(client=authenticated(os.environ["PLATFORM_JWT"])),
    201,
)
theirs = step("read the platform user's wallet", get_wallet.sync_detailed(client=authenticated(exchanged.token)), 200)
if theirs.shopper_id != exchanged.id:
    sys.exit(f"the exchanged token is another shopper: {theirs.shopper_id} != {exchanged.id}")
print("sale ok")
