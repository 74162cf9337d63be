"""The gRPC edge of the control plane: servicers (decode -> use case -> encode), coded error mapping
with the ``grpc-status-details-bin`` trailer, the dev TLS CA, and the server bootstrap. Generated protobuf
types never leave this package."""
