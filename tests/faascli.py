"""`faas-cli invoke` as faas-cli 0.16.28 does it (commands/invoke.go, proxy/invoke.go), for
tests of the commands the README gives users: faas-cli itself is in no package registry we
can reach, and what it does with an answer decides what the user sees.

What matters here: stdin is the body; the method is POST unless `-m`; the Content-Type is
text/plain unless `--content-type`; `--query k=v` and `-H k=v` are added as given; a 200 or
201 prints the body; ANY 202 prints only "Function submitted asynchronously." to stderr and
drops the body (sync calls included); 401 says to log in; anything else fails with
"server returned unexpected status code: N - <body>".
"""

from __future__ import annotations

from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str


def invoke(
    gateway: str,
    name: str,
    stdin: bytes = b"",
    *,
    query: list[str] | None = None,
    headers: list[str] | None = None,
    method: str = "POST",
    content_type: str = "text/plain",
    is_async: bool = False,
    namespace: str = "",
) -> Result:
    for q in query or []:
        if "=" not in q or q.endswith("="):
            return Result(1, "", "Error: the --query flags must take the form of key=value\n")
    header_map: dict[str, str] = {}
    for h in headers or []:
        key, sep, value = h.partition("=")
        if not sep or not key or not value:
            return Result(1, "", "Error: the --header or -H flag must take the form of key=value\n")
        header_map[key] = value
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        return Result(1, "", "Error: the --method or -m flag must take one of these values\n")
    url = gateway.rstrip("/") + ("/async-function/" if is_async else "/function/") + name
    if namespace:
        url += "." + namespace
    if query:
        url += "?" + "&".join(query)
    try:
        resp = requests.request(
            method,
            url,
            data=stdin,
            headers={"Content-Type": content_type, **header_map},
            timeout=120,
        )
    except requests.RequestException:
        return Result(1, "", f"Error: cannot connect to OpenFaaS on URL: {gateway}\n")
    if resp.status_code == 202:
        return Result(0, "", "Function submitted asynchronously.\n")
    if resp.status_code in (200, 201):
        return Result(0, resp.text, "")
    if resp.status_code == 401:
        return Result(1, "", 'Error: unauthorized access, run "faas-cli login"\n')
    return Result(
        1, "", f"Error: server returned unexpected status code: {resp.status_code} - {resp.text}\n"
    )
