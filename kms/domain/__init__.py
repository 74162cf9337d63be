"""The control plane's pure domain: node records and their transitions, the key catalogue, the release premises
and the OpenBao transit port. No I/O libraries (no sqlalchemy, hvac, grpc); tests/unit/test_layering.py checks it."""
