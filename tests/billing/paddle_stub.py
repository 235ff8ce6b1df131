"""A stand-in for Paddle's API on a loopback port: real HTTP, the documented response shapes,
and scriptable failures. Tests point PADDLE_API_BASE_URL at it."""

import itertools
import json
import re
import socket
import threading
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from tests.billing import payloads

PORTAL_HOST = "https://customer-portal.paddle.com"
INVOICE_HOST = "https://paddle-production-invoice-service-pdfs.s3.amazonaws.com"


@dataclass
class Call:
    method: str
    path: str
    body: dict | None
    headers: dict


@dataclass
class Failure:
    status: int
    body: bytes
    content_type: str = "application/json"


def paddle_error(status: int, code: str, detail: str) -> Failure:
    body = {
        "error": {
            "type": "request_error" if status < 500 else "api_error",
            "code": code,
            "detail": detail,
            "documentation_url": f"https://developer.paddle.com/errors/shared/{code}",
        },
        "meta": {"request_id": "7ef5ff71-5b0c-4b5a-9a8a-0b5c2b1c9c4d"},
    }
    return Failure(status, json.dumps(body).encode())


@dataclass
class PaddleAPIStub:
    """Holds customers, transactions and subscriptions by id; answers customer and transaction
    creation (one customer per email, as Paddle), cancel, update, resume (refusing, as Paddle,
    the ones the subscription's state does not allow), portal and invoice calls. The first
    customer created gets `payloads.CUSTOMER_ID`."""

    customers: dict[str, dict] = field(default_factory=dict)
    transactions: dict[str, dict] = field(default_factory=dict)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    # Run (in the server's thread) as each call arrives, before it is answered: for races.
    on_call: Callable[[Call], None] | None = None

    def __post_init__(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub._handle(self, "GET")

            def do_POST(self):
                stub._handle(self, "POST")

            def do_PATCH(self):
                stub._handle(self, "PATCH")

            def log_message(self, *args):
                pass

        self.numbers = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # stop() waits for serve_forever to look at its shutdown flag, every poll_interval
        # (0.5 s by default): half a second at the end of each test that used the stub.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, failure: Failure) -> None:
        self.failures.append(failure)

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        url = urlsplit(request.path)
        path = url.path
        call = Call(method, path, body, dict(request.headers))
        self.calls.append(call)
        if self.on_call is not None:
            self.on_call(call)
        if self.failures:
            failure = self.failures.pop(0)
            return self._send(request, failure.status, failure.body, failure.content_type)
        status, answer = self._route(method, path, body or {}, parse_qs(url.query))
        self._send(request, status, json.dumps(answer).encode())

    def calls_to(self, method: str, path: str) -> list[Call]:
        return [call for call in self.calls if (call.method, call.path) == (method, path)]

    def _route(self, method: str, path: str, body: dict, query: dict) -> tuple[int, dict]:
        meta = {"request_id": "b1b2c3d4-0000-4000-8000-000000000000"}
        if path == "/customers" and method == "POST":
            return self._create_customer(body, meta)
        if path == "/customers" and method == "GET":
            emails = ",".join(query.get("email", [])).split(",")
            found = [entity for entity in self.customers.values() if entity["email"] in emails]
            pagination = {"per_page": 50, "next": None, "has_more": False, "estimated_total": 1}
            return 200, {"data": found, "meta": {**meta, "pagination": pagination}}
        if path == "/transactions" and method == "POST":
            return self._create_transaction(body, meta)
        if match := re.fullmatch(r"/subscriptions/([^/]+)(/cancel|/resume)?", path):
            subscription_id, action = match.groups()
            entity = self.subscriptions.get(subscription_id)
            if entity is None:
                return 404, json.loads(paddle_error(404, "entity_not_found", "Not found").body)
            if refusal := self._refusal(method, action, entity, body):
                return 400, json.loads(paddle_error(400, *refusal).body)
            if method == "POST" and action == "/cancel":
                if body.get("effective_from") == "immediately":
                    entity = payloads.canceled_now(entity)
                else:
                    entity = payloads.cancel_scheduled(entity)
            elif method == "POST" and action == "/resume":
                entity = payloads.subscription(
                    account_id=(entity.get("custom_data") or {}).get("account_id"),
                    subscription_id=subscription_id,
                    price_id=entity["items"][0]["price"]["id"],
                )
            elif method == "PATCH":
                entity = deepcopy(entity)
                if "scheduled_change" in body:
                    entity["scheduled_change"] = body["scheduled_change"]
                if body.get("items"):
                    entity["items"][0]["price"]["id"] = body["items"][0]["price_id"]
            if method in ("POST", "PATCH"):
                # Paddle stamps every change of the entity with its own time.
                entity = {**entity, "updated_at": payloads.iso(payloads.now())}
            self.subscriptions[subscription_id] = entity
            return 200, {"data": entity, "meta": meta}
        if match := re.fullmatch(r"/customers/([^/]+)/portal-sessions", path):
            customer_id = match.group(1)
            return 201, {
                "data": {
                    "id": "cpls_01hv8xportal000000000000000",
                    "customer_id": customer_id,
                    "urls": {
                        "general": {
                            "overview": f"{PORTAL_HOST}/cpl_01hv8x?token=pga_{customer_id}"
                        },
                        "subscriptions": [
                            {
                                "id": subscription_id,
                                "cancel_subscription": f"{PORTAL_HOST}/cancel",
                                "update_subscription_payment_method": f"{PORTAL_HOST}/update",
                            }
                            for subscription_id in body.get("subscription_ids", [])
                        ],
                    },
                    "created_at": payloads.iso(payloads.now()),
                },
                "meta": meta,
            }
        if match := re.fullmatch(r"/transactions/([^/]+)/invoice", path):
            url = f"{INVOICE_HOST}/invoices/{match.group(1)}.pdf?X-Amz-Signature=abc"
            return 200, {"data": {"url": url}, "meta": meta}
        return 404, json.loads(paddle_error(404, "not_found", "No such route").body)

    @staticmethod
    def _refusal(method: str, action: str | None, entity: dict, body: dict) -> tuple[str, ...]:
        """Paddle's documented refusal (code, detail) of a change its state does not allow:
        anything on a canceled subscription, a second period-end cancel (the first one is a
        scheduled change), resuming one that is not paused."""
        if method == "GET":
            return ()
        if entity["status"] == "canceled" and method == "PATCH":
            return (
                "subscription_update_when_canceled",
                "cannot update subscription, as subscription is canceled",
            )
        if entity["status"] == "canceled":
            return (
                "subscription_is_canceled_action_invalid",
                "action can't be performed on canceled subscription",
            )
        at_period_end = body.get("effective_from") != "immediately"
        if action == "/cancel" and at_period_end and entity.get("scheduled_change"):
            return (
                "subscription_locked_pending_changes",
                "cannot update subscription, pending scheduled changes",
            )
        if action == "/resume" and entity["status"] != "paused":
            return (
                "subscription_must_be_paused",
                "action can only be performed on paused subscription",
            )
        return ()

    def _create_customer(self, body: dict, meta: dict) -> tuple[int, dict]:
        email = body.get("email") or ""
        taken = next((c for c in self.customers.values() if c["email"] == email), None)
        if taken is not None:
            detail = f"customer email conflicts with customer of id {taken['id']}"
            return 409, json.loads(paddle_error(409, "customer_already_exists", detail).body)
        number = next(self.numbers)
        customer_id = payloads.CUSTOMER_ID if not self.customers else f"ctm_01hv8stub{number:016d}"
        account_id = (body.get("custom_data") or {}).get("account_id")
        entity = payloads.customer(customer_id=customer_id, email=email, account_id=account_id)
        self.customers[customer_id] = entity
        return 201, {"data": entity, "meta": meta}

    def _create_transaction(self, body: dict, meta: dict) -> tuple[int, dict]:
        if body.get("customer_id") not in self.customers:
            return 404, json.loads(paddle_error(404, "entity_not_found", "No customer").body)
        transaction_id = f"txn_01hv8stub{next(self.numbers):016d}"
        entity = payloads.transaction(
            account_id=None,
            status="ready",
            transaction_id=transaction_id,
            subscription_id=None,
            invoice_number=None,
            customer_id=body["customer_id"],
            price_id=body["items"][0]["price_id"],
        )
        entity.update(custom_data=body.get("custom_data"), billed_at=None, origin="api")
        self.transactions[transaction_id] = entity
        return 201, {"data": entity, "meta": meta}

    @staticmethod
    def _send(request, status: int, body: bytes, content_type: str = "application/json"):
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting fails at once (a network error)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
