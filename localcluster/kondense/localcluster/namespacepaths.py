"""An adapter for one path rule of kmock 0.8: the paths of Namespace objects.

kmock turns every HTTP request into a :class:`kmock.Request` with a Kubernetes resource, namespace, name
and subresource parsed from the path. Its parser reads ``/api/v1/namespaces/<x>`` as the *namespace
prefix* of a namespaced resource, so the paths of the (cluster-scoped) Namespace objects themselves are
misread: ``/api/v1/namespaces/foo`` becomes "no resource in namespace foo", ``/api/v1/namespaces/foo/status``
becomes "resource ``status`` in namespace foo", and the collection ``/api/v1/namespaces`` fails to parse.

The emulator therefore hands kmock such a request under an alias path it parses like any other
cluster-scoped resource (``rename``), and turns the parsed request back into the Namespace request it
was (``restore``) before anything matches or serves it. Only the emulator's own requests go through
this; kmock itself is not changed, so every other kmock user in the process keeps kmock's behaviour
(``tests/localcluster/test_namespace_paths.py`` checks both).

Upstream fix that removes this module: kmock's path parser treating ``namespaces`` as the namespace
prefix only when a resource follows it (``/api/v1/namespaces/<ns>/<plural>[/...]``), so that
``/api/v1/namespaces[/<name>[/status|/finalize]]`` parse as the core ``namespaces`` resource, as the
Kubernetes API server routes them.
"""

from __future__ import annotations

import re

import attrs
import kmock
import yarl

NAMESPACES = kmock.resource("", "v1", "namespaces")
# A plural no API group serves, so a renamed request can never be confused with a real resource.
ALIAS_PLURAL = "kondense.localcluster.namespaces"
_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?P<rest>(?:/[^/]+(?:/(?:status|finalize))?)?/?)")
_ALIAS_PATH = re.compile(rf"/api/v1/{re.escape(ALIAS_PLURAL)}(?P<rest>(?:/[^/]+(?:/[^/]+)?)?/?)")


def rename(url: yarl.URL) -> yarl.URL | None:
    """The alias of a Namespace object or collection path (query kept), or None for any other path."""
    if (match := _NAMESPACE_PATH.fullmatch(url.path)) is None:
        return None
    return url.with_path(f"/api/v1/{ALIAS_PLURAL}{match['rest']}").with_query(url.query)


def restore(request: kmock.Request) -> kmock.Request:
    """The request as the client sent it, when kmock parsed it under the alias; else unchanged."""
    if request.resource is None or request.resource.plural != ALIAS_PLURAL:
        return request
    match = _ALIAS_PATH.fullmatch(request.url.path)
    if match is None:  # pragma: no cover - the alias only comes from rename()
        raise ValueError(f"not an aliased Namespace path: {request.url.path}")
    url = request.url.with_path(f"/api/v1/namespaces{match['rest']}").with_query(request.url.query)
    # the action kmock guessed (list/watch/create/fetch/update/delete) holds as it is
    return attrs.evolve(request, url=url, resource=NAMESPACES, namespace=None)
