"""The request middleware: one transaction per request, tagged with the request's context.

pubsubpull records, for every transaction that changes a tracked table, the JSON the transaction
gave to ``pubsubpull.set_context`` (see the README). This middleware opens a transaction on the
configured database for each request, calls ``set_context`` first with who made the request and
which request it is, and lets the rest of the request run inside that transaction, so that every
change the request makes carries the same context. A view that raises rolls the transaction back.

Settings (all optional):

``PUBSUBPULL_DATABASE``
    The database alias to open the transaction on (default ``"default"``). Writes to other
    databases are not in this transaction and carry no application context.
``PUBSUBPULL_TRUST_X_FORWARDED_FOR``
    ``False`` (default): ``remote_addr`` is the peer address (``REMOTE_ADDR``). ``True`` or a
    number N: N proxies (``True`` is one) in front of Django each append the address they saw to
    ``X-Forwarded-For``; ``remote_addr`` is the N-th entry from the right, which a client cannot
    forge.
``PUBSUBPULL_EXTRA_CONTEXT``
    A callable ``f(request) -> dict`` (or its dotted path) whose result is merged into the
    context, for fields of your own (tenant, client version, ...). Values must be JSON-serializable
    (anything else is stored as ``str(value)``).
"""

import json
import uuid

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils.module_loading import import_string

# A client-supplied request id longer than this is cut, so that a header cannot bloat the
# context table.
MAX_REQUEST_ID_LENGTH = 200


class ContextMiddleware:
    """Runs each request in one transaction whose changes carry the request's context."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.alias = getattr(settings, "PUBSUBPULL_DATABASE", DEFAULT_DB_ALIAS)
        trust = getattr(settings, "PUBSUBPULL_TRUST_X_FORWARDED_FOR", False)
        # bool is an int: True counts as one proxy, False as none.
        if not isinstance(trust, int) or trust < 0:
            raise ImproperlyConfigured(
                "PUBSUBPULL_TRUST_X_FORWARDED_FOR must be True, False or a number of proxies"
            )
        self.proxy_count = int(trust)
        extra = getattr(settings, "PUBSUBPULL_EXTRA_CONTEXT", None)
        self.extra = import_string(extra) if isinstance(extra, str) else extra

    def __call__(self, request):
        context = self.context(request)
        # Views and logs can use the same request id.
        request.pubsubpull_context = context
        with transaction.atomic(using=self.alias):
            with connections[self.alias].cursor() as cursor:
                # Transaction-local: it tags every change this transaction makes, and only those.
                cursor.execute(
                    "SELECT pubsubpull.set_context(%s::jsonb)",
                    [json.dumps(context, default=str)],
                )
            # The response is built inside the transaction; a streaming response's body is
            # produced after the commit, so writes made while streaming are not covered.
            return self.get_response(request)

    def process_exception(self, request, exception):
        # Django turns a view's exception into a 500 response before it reaches __call__, which
        # would then commit what the view wrote before failing. Mark the transaction for
        # rollback instead, as ATOMIC_REQUESTS does; Django's error handling then goes on.
        if connections[self.alias].in_atomic_block:
            transaction.set_rollback(True, using=self.alias)
        return None

    def context(self, request):
        """The JSON object given to pubsubpull.set_context for this request."""
        if not hasattr(request, "user") and apps.is_installed("django.contrib.auth"):
            raise ImproperlyConfigured(
                "pubsubpull_django.middleware.ContextMiddleware must come after "
                "django.contrib.auth.middleware.AuthenticationMiddleware in MIDDLEWARE"
            )
        user = getattr(request, "user", None)
        authenticated = user is not None and user.is_authenticated
        request_id = request.headers.get("X-Request-ID") or str(uuid.uuid4())
        context = {
            "user": user.get_username() if authenticated else None,
            "user_id": user.pk if authenticated else None,
            "method": request.method,
            "path": request.path,
            "request_id": request_id[:MAX_REQUEST_ID_LENGTH],
            "remote_addr": self.remote_addr(request),
        }
        if self.extra is not None:
            context.update(self.extra(request))
        return context

    def remote_addr(self, request):
        """The client's address: the peer's, or the one the trusted proxies report."""
        if self.proxy_count:
            forwarded = [
                part.strip()
                for part in request.headers.get("X-Forwarded-For", "").split(",")
                if part.strip()
            ]
            if len(forwarded) >= self.proxy_count:
                return forwarded[-self.proxy_count]
        return request.META.get("REMOTE_ADDR")
