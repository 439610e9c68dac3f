"""Django integration of pubsubpull: request context for every change a request makes.

Add ``pubsubpull_django.middleware.ContextMiddleware`` to ``MIDDLEWARE`` after
``AuthenticationMiddleware``; see README.md.
"""
