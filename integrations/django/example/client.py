#!/usr/bin/env python3
"""Plays a plan of HTTP requests against the running example server, with only the standard library.

The plan, JSON on stdin:
    {"base": "http://127.0.0.1:8000",
     "passwords": {"alice": "..."},
     "steps": [{"user": "alice", "method": "POST", "path": "/notes/", "body": {...},
                "headers": {"X-Request-ID": "..."}}, ...]}

Each user has a session of their own (cookies), logged in before their first step through
GET then POST /login/ (CSRF cookie, then the login itself). Prints one JSON line per step:
{"status": 201, "body": {...} or null}.
"""
import http.cookiejar
import json
import sys
import urllib.error
import urllib.request


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Reports redirects (a 302 to the login page) as they are instead of following them."""

    def redirect_request(self, *args, **kwargs):
        return None


class Session:
    def __init__(self, base):
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), NoRedirect()
        )

    def request(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        # Django's CSRF protection: the cookie's value echoed in a header.
        for cookie in self.cookies:
            if cookie.name == "csrftoken":
                req.add_header("X-CSRFToken", cookie.value)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def login(self, username, password):
        status, _ = self.request("GET", "/login/")
        assert status == 204, f"GET /login/: {status}"
        status, body = self.request(
            "POST", "/login/", {"username": username, "password": password}
        )
        assert status == 204, f"login as {username}: {status} {body!r}"


def main():
    plan = json.load(sys.stdin)
    sessions = {}
    for step in plan["steps"]:
        user = step["user"]
        if user not in sessions:
            sessions[user] = Session(plan["base"])
            sessions[user].login(user, plan["passwords"][user])
        status, body = sessions[user].request(
            step["method"], step["path"], step.get("body"), step.get("headers")
        )
        try:
            body = json.loads(body) if body else None
        except ValueError:
            body = body.decode(errors="replace")
        print(json.dumps({"status": status, "body": body}), flush=True)


if __name__ == "__main__":
    main()
