"""The OpenBao adapter's names, where callers have always imported them from.

The adapter is split by job: ``settings`` (addresses, credentials), ``failures`` (hvac/requests errors to
coded ones, what may fail over), ``session`` (the pooled client, login, token renewal, active-node
following) and ``transit`` (the ``Transit`` port: data keys, signing keys, key info).
"""

from kms.openbao.failures import FailoverError, StandbyRedirect, _mapped, map_error
from kms.openbao.session import OpenBaoSession, pooled_client
from kms.openbao.settings import TRANSIT_MOUNT, AppRoleAuth, BaoSettings, TokenAuth
from kms.openbao.transit import DATA_KEY_BITS, OpenBaoTransit

__all__ = [
    "DATA_KEY_BITS",
    "TRANSIT_MOUNT",
    "AppRoleAuth",
    "BaoSettings",
    "FailoverError",
    "OpenBaoSession",
    "OpenBaoTransit",
    "StandbyRedirect",
    "TokenAuth",
    "_mapped",
    "map_error",
    "pooled_client",
]
