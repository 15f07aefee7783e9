"""TLS credentials of a profile, as a ``distributed.security.Security``."""

from __future__ import annotations

import os
from pathlib import Path

from distributed.security import Security

from .base import DetflowClusterError
from .models import Profile


def security_for(prof: Profile, address: str | None = None):
    """The ``distributed.security.Security`` of a profile (None: plain tcp). A ``tls://`` address without
    a security block takes the credentials of the dask config (``distributed.comm.tls.*``)."""
    tls = prof.security
    if tls is None:
        if (address or prof.address or "").startswith("tls://"):
            sec = Security()  # dask config: distributed.comm.tls.* (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, ...)
            if sec.tls_ca_file and sec.tls_client_cert:
                return sec
            raise DetflowClusterError(prof.source, "security", "TLS credentials for a tls:// address: a security "
                                      "block (ca_file, cert, key) or the dask config distributed.comm.tls.ca-file "
                                      "and distributed.comm.tls.client.cert/key", "none")  # fmt: skip
        return None
    if tls.temporary:
        return Security.temporary()
    files = {}
    for key in ("ca_file", "cert", "key"):
        path = getattr(tls, key)
        if path is None:
            continue
        path = Path(os.path.expandvars(str(path))).expanduser()
        if not path.is_file():
            raise DetflowClusterError(prof.source, f"security.{key}", "an existing PEM file", f"{path}: no such file")
        files[key] = str(path)
    cert, key = files["cert"], files.get("key")
    roles = {f"tls_{role}_{what}": value for role in ("client", "scheduler", "worker")
             for what, value in (("cert", cert), ("key", key)) if value}  # fmt: skip
    return Security(require_encryption=tls.require_encryption, tls_ca_file=files["ca_file"], **roles)
