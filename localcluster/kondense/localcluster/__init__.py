"""The embedded local cluster: a Kubernetes API for the operator without a real cluster.

``LocalAPIServer`` (see :mod:`kondense.localcluster.apiserver` for the emulated semantics and the gaps)
serves the API over real HTTP so the operator, kopf and the official client run unmodified against it.

Two halves (``localcluster/README.md``): the generic Kubernetes parts (``apiserver``, ``emulator``,
``namespacepaths``, ``patching``, ``selectors``, ``structural``, ``client``, ``controllers``,
``kubelet``, ``services``, ``prometheus``) import nothing of kondense; ``cluster``, ``scenarios``,
``demo`` and ``cli`` run kondense on top of them.
"""

from kondense.localcluster.apiserver import LocalAPIServer

__all__ = ["LocalAPIServer"]
