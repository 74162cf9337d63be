"""The control plane: OpenBao adapter, key catalogue, registry, release, audit, gRPC servicers."""
